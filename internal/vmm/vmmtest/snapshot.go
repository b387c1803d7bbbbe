package vmmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

var (
	_ vmm.Pauser      = (*Fake)(nil)
	_ vmm.Snapshotter = (*Fake)(nil)
)

// FakeStateFile is the fake's one snapshot file.
const FakeStateFile = "state.fake"

// Paused reports whether the fake VM id is paused.
func (f *Fake) Paused(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paused[id]
}

func (f *Fake) setPaused(spec vmm.Spec, paused bool) error {
	p := f.Process(spec.ID)
	if !system.Alive(p.PID, p.StartTime) {
		return errdefs.FailedPrecondition("fake: vm %s is not running", spec.Name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused == nil {
		f.paused = map[string]bool{}
	}
	f.paused[spec.ID] = paused
	return nil
}

// Pause marks the VM paused (the fake VMM process keeps running, as a
// paused QEMU or Firecracker does).
func (f *Fake) Pause(_ context.Context, spec vmm.Spec) error {
	f.record("pause " + spec.Name)
	return f.setPaused(spec, true)
}

// Resume marks the VM running.
func (f *Fake) Resume(_ context.Context, spec vmm.Spec) error {
	f.record("resume " + spec.Name)
	return f.setPaused(spec, false)
}

// fakeMeta is the meta the fake records: the shape, and the kernel path
// standing for its hash (tests need no kernel file).
func fakeMeta(kind string, spec vmm.Spec) vmm.SnapshotMeta {
	return vmm.SnapshotMeta{Driver: kind, VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB, Kernel: spec.Kernel,
		KernelSHA256: "fake:" + spec.Kernel, Network: spec.Tap != "", Vsock: spec.VsockPath != ""}
}

// SaveSnapshot writes a small state file and the meta into dir; the VM
// must be paused, as with the real drivers.
func (f *Fake) SaveSnapshot(_ context.Context, spec vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	f.record("snapshot " + spec.Name)
	meta := fakeMeta(f.Kind(), spec)
	if !f.Paused(spec.ID) {
		return meta, errdefs.FailedPrecondition("fake: vm %s is not paused (hint: pause it before saving a snapshot)", spec.Name)
	}
	p := filepath.Join(dir, FakeStateFile)
	if err := os.WriteFile(p, []byte("fake state of "+spec.ID+"\n"), 0o600); err != nil {
		return meta, fmt.Errorf("fake: snapshot: %w", err)
	}
	meta.Files = []string{FakeStateFile}
	meta.SizeBytes = int64(len("fake state of " + spec.ID + "\n"))
	meta.Created = time.Now().UTC()
	if err := vmm.WriteSnapshotMeta(dir, meta); err != nil {
		return meta, errors.Join(err, os.Remove(p))
	}
	return meta, nil
}

// checkRestore is what Launch does first for a spec with Restore.
func (f *Fake) checkRestore(spec vmm.Spec) error {
	_, err := vmm.CheckRestoreDir(spec.Restore.Dir, fakeMeta(f.Kind(), spec))
	return err
}
