package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestUmask000DaemonCreatesNothingWritableByOthers runs the daemon under
// umask 000, boots a VM, and checks every path the daemon created under its
// state and runtime dirs and its log: nothing group- or world-writable, and
// every socket root's alone (0600; the control socket is 0660 only with
// --socket-group). Permissions must never depend on the umask.
func TestUmask000DaemonCreatesNothingWritableByOthers(t *testing.T) {
	requireE2E(t)
	old := syscall.Umask(0)
	d := startDaemon(t) // the daemon inherits umask 000
	syscall.Umask(old)
	d.importTestImage()
	d.createVM("u1")
	d.must("vm", "start", "u1")
	d.waitLog("u1", "BANGER-TEST-BOOT", 1, 2*time.Minute)

	var bad []string
	check := func(path string, mode fs.FileMode) {
		switch {
		case mode&fs.ModeSymlink != 0:
		case mode&fs.ModeSocket != 0 && mode.Perm() != 0o600:
			bad = append(bad, fmt.Sprintf("%s: socket mode %04o, want 0600", path, mode.Perm()))
		case mode.Perm()&0o022 != 0:
			bad = append(bad, fmt.Sprintf("%s: mode %04o is group- or world-writable", path, mode.Perm()))
		}
	}
	for _, root := range []string{d.stateDir, d.runDir} {
		err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := e.Info()
			if err != nil {
				return err
			}
			check(path, info.Mode())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{d.logFile, d.logFile + ".1"} {
		if info, err := os.Lstat(p); err == nil {
			check(p, info.Mode())
		}
	}
	for _, b := range bad {
		t.Error(b)
	}
}
