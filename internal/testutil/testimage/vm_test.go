package testimage

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	bootTimeout     = 60 * time.Second
	shutdownTimeout = 30 * time.Second
)

// TestBootCountAndGracefulStop boots the image twice on the same disk under
// QEMU/TCG: the boot marker appears, Ctrl-Alt-Del sent over QMP gives the
// shutdown marker and QEMU exits by itself, the disk is left clean, and the
// second boot counts 2.
func TestBootCountAndGracefulStop(t *testing.T) {
	img := buildImage(t)
	disk := filepath.Join(t.TempDir(), "root.ext4")
	copyFile(t, img.Rootfs, disk)

	for boot := 1; boot <= 2; boot++ {
		v := startVM(t, img, vmConfig{Machine: "q35", CPU: "max", Paused: true, Disk: disk})
		took, err := v.waitConsole(BootLine(boot), bootTimeout)
		if err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		t.Logf("boot %d: %q after %.2fs", boot, BootLine(boot), took.Seconds())
		if n, ok := LastBootCount([]byte(v.console())); !ok || n != boot {
			t.Fatalf("boot %d: LastBootCount = %d, %v", boot, n, ok)
		}
		sent := time.Now()
		if err := v.sendCtrlAltDel(); err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		if _, err := v.waitConsole(ShutdownMarker, shutdownTimeout); err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		if err := v.waitExit(shutdownTimeout); err != nil {
			t.Fatalf("boot %d: qemu did not exit cleanly after Ctrl-Alt-Del: %v", boot, err)
		}
		t.Logf("boot %d: qemu exited %.2fs after send-key", boot, time.Since(sent).Seconds())
		// The guest remounted / read-only before powering off: the disk is clean.
		if out, err := exec.Command("e2fsck", "-fn", disk).CombinedOutput(); err != nil {
			t.Fatalf("boot %d: e2fsck -fn: %v\n%s", boot, err, out)
		}
		if strings.Contains(v.console(), "initramfs: insmod") {
			t.Errorf("boot %d: an insmod failed:\n%s", boot, v.console())
		}
	}
}
