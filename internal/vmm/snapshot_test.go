package vmm_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/vmm"
)

// TestCheckRestore: every field a restored guest depends on is checked, and
// the error names both shapes and what differs.
func TestCheckRestore(t *testing.T) {
	base := vmm.SnapshotMeta{Driver: "qemu", Machine: "q35", VCPUs: 2, MemoryMiB: 1024,
		Kernel: "/k/vmlinuz", KernelSHA256: "aaaaaaaaaaaaaaaa", InitrdSHA256: "bbbbbbbbbbbbbbbb", Network: true}
	if err := vmm.CheckRestore(base, base); err != nil {
		t.Fatalf("same meta: %v", err)
	}
	// Fields that are not part of the shape do not matter.
	other := base
	other.Files, other.SizeBytes, other.Kernel = []string{"x"}, 5, "/elsewhere/vmlinuz"
	if err := vmm.CheckRestore(base, other); err != nil {
		t.Fatalf("same shape: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*vmm.SnapshotMeta)
		want   []string
	}{
		{"vcpus", func(m *vmm.SnapshotMeta) { m.VCPUs = 1 }, []string{"2 vcpus/1024 MiB on qemu (q35); this vm has 1 vcpu/1024 MiB on qemu (q35)"}},
		{"memory", func(m *vmm.SnapshotMeta) { m.MemoryMiB = 512 }, []string{"this vm has 2 vcpus/512 MiB"}},
		{"driver", func(m *vmm.SnapshotMeta) { m.Driver, m.Machine = "firecracker", "" }, []string{"this vm has 2 vcpus/1024 MiB on firecracker (hint"}},
		{"machine", func(m *vmm.SnapshotMeta) { m.Machine = "pc" }, []string{"on qemu (pc)"}},
		{"kernel", func(m *vmm.SnapshotMeta) { m.KernelSHA256 = "cccccccccccccccc" }, []string{"kernel vmlinuz sha256 aaaaaaaaaaaa;", "kernel vmlinuz sha256 cccccccccccc"}},
		{"initrd", func(m *vmm.SnapshotMeta) { m.InitrdSHA256 = "" }, []string{"initrd sha256 bbbbbbbbbbbb;", "initrd sha256 none"}},
		{"network", func(m *vmm.SnapshotMeta) { m.Network = false }, []string{"network device yes;", "network device no"}},
		{"vsock", func(m *vmm.SnapshotMeta) { m.Vsock = true }, []string{"vsock device no;", "vsock device yes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := base
			tc.change(&vm)
			err := vmm.CheckRestore(base, vm)
			if !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("err = %v, want failed precondition", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), "(hint: ") {
				t.Errorf("error %q has no hint", err)
			}
		})
	}
}

// TestSnapshotMetaFile: the meta round-trips with mode 0600; a dir without
// one is not found, a corrupt one is a failed precondition.
func TestSnapshotMetaFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := vmm.ReadSnapshotMeta(dir); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("no meta: err = %v, want not found", err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	meta, err := vmm.NewSnapshotMeta("qemu", "q35", vmm.Spec{VCPUs: 1, MemoryMiB: 256, Kernel: kernel, Tap: "tap0"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if meta.KernelSHA256 != "6923dd1bc0460082c5d55a831908c24a282860b7f1cd6c2b79cf1bc8857c639c" || !meta.Network || meta.InitrdSHA256 != "" {
		t.Fatalf("meta = %+v", meta)
	}
	if err := vmm.WriteSnapshotMeta(dir, meta); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, vmm.SnapshotMetaFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("meta file: %v %v", fi, err)
	}
	got, err := vmm.CheckRestoreDir(dir, meta)
	if err != nil || got.KernelSHA256 != meta.KernelSHA256 {
		t.Fatalf("CheckRestoreDir: %+v %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, vmm.SnapshotMetaFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := vmm.ReadSnapshotMeta(dir); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("corrupt meta: err = %v, want failed precondition", err)
	}
	if _, err := vmm.NewSnapshotMeta("qemu", "q35", vmm.Spec{Kernel: filepath.Join(dir, "missing")}, false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing kernel: err = %v", err)
	}
}
