package daemon

import (
	"context"

	"github.com/banger-vm/banger/internal/vmm"
)

// AutoVMM asks the daemon to pick the driver (see vmm.Choose).
const AutoVMM = vmm.Auto

// ChooseVMM resolves a requested driver ("" means the daemon's default)
// to one that can run on this host, with the reason for the choice.
func (s *Service) ChooseVMM(ctx context.Context, requested string) (kind, reason string, err error) {
	if requested == "" {
		requested = s.cfg.DefaultVMM
	}
	info, reason, err := vmm.Choose(ctx, s.cfg.Drivers, requested)
	if err != nil {
		return "", "", err
	}
	if info.Accel == "tcg" && !s.tcgWarned.Swap(true) {
		// Once per daemon: the same sentence on every create buries the log.
		s.log.Warn("vms will run under QEMU's TCG software emulation: expect slow guests", "reason", reason)
	}
	return info.Kind, reason, nil
}
