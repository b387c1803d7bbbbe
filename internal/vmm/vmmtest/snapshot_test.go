package vmmtest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

// TestFakeSnapshots: the fake follows the real drivers' rules: saving
// needs a paused VM, restoring refuses another shape before any process
// starts, and restores the same shape.
func TestFakeSnapshots(t *testing.T) {
	f := vmmtest.New()
	ctx := context.Background()
	dir := t.TempDir()
	spec := vmm.Spec{ID: "a", Name: "a", VCPUs: 1, MemoryMiB: 256, Kernel: "/k", VMDir: dir,
		ControlSocket: filepath.Join(dir, "ctl"), LogPath: filepath.Join(dir, "log"), RootDisk: filepath.Join(dir, "root")}
	if err := os.WriteFile(spec.RootDisk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := f.Launch(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kill(t, p) })
	snap := t.TempDir()
	if _, err := f.SaveSnapshot(ctx, spec, snap); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("save while running: %v", err)
	}
	if err := f.Pause(ctx, spec); err != nil || !f.Paused("a") {
		t.Fatalf("Pause: %v", err)
	}
	if _, err := f.SaveSnapshot(ctx, spec, snap); err != nil {
		t.Fatal(err)
	}
	if err := f.Resume(ctx, spec); err != nil || f.Paused("a") {
		t.Fatalf("Resume: %v", err)
	}
	kill(t, p)

	dir2 := t.TempDir()
	restore := spec
	restore.ID, restore.Name, restore.VMDir = "b", "b", dir2
	restore.ControlSocket, restore.LogPath = filepath.Join(dir2, "ctl"), filepath.Join(dir2, "log")
	restore.Restore = &vmm.RestoreSpec{Dir: snap}
	wrong := restore
	wrong.VCPUs = 2
	if _, err := f.Launch(ctx, wrong); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("restore into 2 vcpus: %v", err)
	}
	if len(f.Processes()) != 1 {
		t.Fatalf("the refused restore started a process")
	}
	rp, err := f.Launch(ctx, restore)
	if err != nil {
		t.Fatal(err)
	}
	kill(t, rp)
	if _, err := os.Stat(filepath.Join(snap, vmm.SnapshotMetaFile)); err != nil {
		t.Fatal(err)
	}
}

func kill(t *testing.T, p vmm.Process) {
	t.Helper()
	if !system.Alive(p.PID, p.StartTime) {
		return
	}
	_ = system.Signal(p.PID, p.StartTime, syscall.SIGKILL)
	if !system.WaitExit(context.Background(), p.PID, p.StartTime, 5*time.Second) {
		t.Errorf("pid %d survived SIGKILL", p.PID)
	}
}
