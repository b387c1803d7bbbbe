package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// TestFullStateDisk runs the daemon on a small loop-mounted ext4 state
// dir, boots a VM, fills the filesystem, and checks that stop and delete
// still work and that the daemon restarts.
func TestFullStateDisk(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "state")
	for _, c := range [][]string{
		{"truncate", "-s", "320M", img},
		{"mkfs.ext4", "-q", "-F", img},
		{"mkdir", "-p", mnt},
		{"mount", "-o", "loop", img, mnt},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-d", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	d := startDaemon(t, "--vm-log-cap", "64KiB")
	// The harness's state dir, on the small filesystem: restart on it.
	d.stop()
	os.RemoveAll(d.stateDir)
	if err := os.Symlink(mnt, d.stateDir); err != nil {
		t.Fatal(err)
	}
	d.start()
	d.importTestImage()
	d.createVM("full")
	d.must("vm", "start", "full")
	d.waitLog("full", testimage.BootLine(1), 1, bootTimeout)

	filler := filepath.Join(mnt, "filler")
	out, _ := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=1M").CombinedOutput()
	if !strings.Contains(string(out), "No space left") {
		t.Fatalf("the filesystem did not fill: %s", out)
	}
	t.Cleanup(func() { os.Remove(filler) })
	df, _ := exec.Command("df", "-k", mnt).CombinedOutput()
	t.Logf("full:\n%s", df)

	began := time.Now()
	if r, err := d.run("vm", "stop", "--timeout", "10s", "full"); err != nil {
		t.Errorf("stop on a full disk: %v (exit %d)", err, r.code)
	} else {
		t.Logf("stop on a full disk: ok in %s", time.Since(began).Round(time.Millisecond))
	}
	d.stop()
	d.start()
	t.Log("daemon restarted on a full disk")
	if r, err := d.run("vm", "delete", "full"); err != nil {
		t.Errorf("delete on a full disk: %v (exit %d)", err, r.code)
	}
	os.Remove(filler)
	// Leave the harness a plain dir for its leak checks.
	d.stop()
	os.Remove(d.stateDir)
	os.MkdirAll(d.stateDir, 0o700)
	d.start()
}
