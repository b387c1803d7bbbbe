package doctor

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/vmm"
)

// diskChecks says which root disk strategies this host offers a VM of
// driver info (the auto VMM), and why not the others, probing the
// filesystem VM disks live on (the state dir's vms dir, or its nearest
// existing parent before the daemon made it).
func diskChecks(ctx context.Context, vmsDir string, info vmm.Info) ([]Check, []storage.Offer, storage.Kind, string) {
	h := storage.Probe(ctx, existingParent(vmsDir))
	need := storage.Need{VMM: info.Kind, QCOW2: info.Features.QCOW2}
	offers := storage.Report(need, h)
	var checks []Check
	for _, o := range offers {
		c := Check{Name: "disk " + string(o.Kind), Status: OK, Detail: o.Reason}
		if !o.OK {
			c.Status = Warn
			c.Detail = "not offered to " + info.Kind + " vms: " + o.Reason
			c.Hint = diskHints[o.Kind]
		}
		checks = append(checks, c)
	}
	kind, why, err := storage.Choose(storage.KindAuto, need, h)
	if err != nil {
		return checks, offers, "", err.Error()
	}
	return checks, offers, kind, why
}

func existingParent(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil || !errors.Is(err, os.ErrNotExist) || d == filepath.Dir(d) {
			return d
		}
	}
}

var diskHints = map[storage.Kind]string{
	storage.KindReflink:    "put the state dir on XFS made with reflink=1 (mkfs.xfs default) or on btrfs for constant-time clones",
	storage.KindQCOW2:      "use the qemu driver, with qemu-utils installed",
	storage.KindDMSnapshot: "load dm_mod and install dmsetup (Debian: dmsetup) for device-mapper snapshots",
}
