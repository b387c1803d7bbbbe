package firecracker

import (
	"testing"

	"github.com/banger-vm/banger/internal/vmm"
)

// TestConfigDiskDrive: a spec with a config disk gets a second drive after
// the root, read-only and not the root device; jailed, it is the jail's copy.
func TestConfigDiskDrive(t *testing.T) {
	spec := vmm.Spec{ID: testID, VCPUs: 1, MemoryMiB: 128, Kernel: "/k", RootDisk: "/d", ConfigDisk: "/vms/x/config.disk"}
	for _, tc := range []struct {
		name string
		p    vmPaths
		want string
	}{
		{"direct", pathsFor(spec, nil), "/vms/x/config.disk"},
		{"jailed", pathsFor(spec, &jail{}), jailConfig},
	} {
		var drives []drive
		for _, s := range configSteps(spec, tc.p) {
			if d, ok := s.body.(drive); ok {
				drives = append(drives, d)
			}
		}
		if len(drives) != 2 || !drives[0].IsRootDevice || drives[0].IsReadOnly {
			t.Fatalf("%s: drives %+v, want the root first, writable", tc.name, drives)
		}
		if c := drives[1]; c.DriveID != configDriveID || c.PathOnHost != tc.want || !c.IsReadOnly || c.IsRootDevice {
			t.Fatalf("%s: config drive %+v, want %s read-only", tc.name, c, tc.want)
		}
	}
}
