package vmmtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/internal/vmm"
)

// The daemon's test double keeps the rules real drivers keep.
func TestFakeConformance(t *testing.T) {
	RunConformance(t, func(t *testing.T) Target {
		return Target{
			Driver: New(),
			Spec: func(t *testing.T) vmm.Spec {
				dir := t.TempDir()
				for _, f := range []string{"vmlinux", "rootfs.ext4"} {
					if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				return vmm.Spec{
					ID: "fake-" + filepath.Base(dir), Name: "test", VCPUs: 1, MemoryMiB: 128,
					Kernel: filepath.Join(dir, "vmlinux"), RootDisk: filepath.Join(dir, "rootfs.ext4"),
					ControlSocket: filepath.Join(dir, "ctl"), LogPath: filepath.Join(dir, "vm.log"), VMDir: dir,
				}
			},
			BootMarker: BootLine,
		}
	})
}
