package daemon

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

func TestChooseVMM(t *testing.T) {
	fc := vmmtest.New()
	fc.Info = vmm.Info{Kind: vmm.KindFirecracker, Reason: "firecracker not found (hint: install it)"}
	qemu := vmmtest.New()
	qemu.Info = vmm.Info{Kind: vmm.KindQEMU, Available: true, Accel: "tcg", Reason: "QEMU with TCG software emulation (slow)"}
	logs := &syncBuffer{}
	svc, err := New(Config{Drivers: vmm.Registry{vmm.KindFirecracker: fc, vmm.KindQEMU: qemu},
		Logger: slog.New(slog.NewJSONHandler(logs, nil))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	kind, reason, err := svc.ChooseVMM(ctx, "")
	if err != nil || kind != vmm.KindQEMU {
		t.Fatalf("auto chose %q, %v", kind, err)
	}
	if !strings.Contains(reason, "firecracker unavailable: firecracker not found") || !strings.Contains(reason, "TCG") {
		t.Fatalf("reason %q does not say why", reason)
	}
	if !strings.Contains(logs.String(), "TCG software emulation") {
		t.Fatal("no warning that TCG is slow")
	}
	_, _, err = svc.ChooseVMM(ctx, vmm.KindFirecracker)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "firecracker not found") {
		t.Fatalf("explicit firecracker: %v", err)
	}
	if _, _, err = svc.ChooseVMM(ctx, "xen"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("unknown: %v", err)
	}

	fc.Info.Available, fc.Info.Reason = true, "Firecracker v1.16.1 with KVM"
	if kind, reason, _ := svc.ChooseVMM(ctx, ""); kind != vmm.KindFirecracker || !strings.HasPrefix(reason, "auto: Firecracker") {
		t.Fatalf("auto with firecracker available: %s %s", kind, reason)
	}
	qemu.Info.Available = false
	fc.Info.Available = false
	if _, _, err := svc.ChooseVMM(ctx, ""); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("nothing available: %v", err)
	}
}
