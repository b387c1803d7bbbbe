package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

// fleet is a service whose store holds n stopped VMs of one image.
func fleet(b *testing.B, n int) *Service {
	b.Helper()
	dir := b.TempDir()
	l := layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	if err := l.Ensure(); err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(context.Background(), l.DBPath())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	svc, err := New(Config{Layout: l, Drivers: vmm.Registry{"fake": vmmtest.New()}, DefaultVMM: "fake",
		Logger: slog.New(slog.DiscardHandler)}, st)
	if err != nil {
		b.Fatal(err)
	}
	kernel, rootfs := testutil.FakeImageFiles(b, dir)
	im, err := svc.ImportImage(context.Background(), api.ImportImageRequest{Name: DefaultImage, Kernel: kernel, Rootfs: rootfs})
	if err != nil {
		b.Fatal(err)
	}
	err = st.Transaction(context.Background(), func(tx *store.Tx) error {
		for i := range n {
			id := fmt.Sprintf("%08x%024x", i, i)
			v := &model.VM{ID: id, Name: fmt.Sprintf("vm-%d", i), ImageID: im.ID, VCPUs: 1, MemoryMiB: 128, VMM: "fake",
				VMMReason: "fake: requested", State: model.StateStopped, GuestIP: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
				VMDir: l.VM(id).Path(), LogPath: l.VM(id).LogPath(), CreatedAt: time.Unix(int64(i), 0)}
			if err := tx.InsertVM(context.Background(), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return svc
}

// BenchmarkShowVM: vm show's view, with 10 and 1000 VMs on one image;
// the figures should be flat.
func BenchmarkShowVM(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svc := fleet(b, n)
			for b.Loop() {
				if _, err := svc.ShowVM(context.Background(), "vm-0"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStartupReconcile: reconcile at daemon start, with 10 and 1000
// stopped VMs; flat too (stopped VMs are not read).
func BenchmarkStartupReconcile(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svc := fleet(b, n)
			for b.Loop() {
				if err := svc.Reconcile(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkListVMs: vm list's read, with 10 and 1000 VMs; linear in the
// VMs, and only the listed columns.
func BenchmarkListVMs(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svc := fleet(b, n)
			for b.Loop() {
				if vms, err := svc.ListVMs(context.Background()); err != nil || len(vms) != n {
					b.Fatal(len(vms), err)
				}
			}
		})
	}
}

// BenchmarkRecover: the start-up recovery (reconcile, interrupted ops,
// orphan sweeps) with 10 and 1000 stopped VMs, which it reads narrowly.
func BenchmarkRecover(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svc := fleet(b, n)
			for b.Loop() {
				if err := svc.Recover(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
