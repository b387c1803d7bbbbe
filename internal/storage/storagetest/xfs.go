package storagetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/testutil"
)

// XFS makes a 2 GiB sparse file, an XFS with reflink in it, and mounts it
// through a loop device; it returns the mount point. The mount, the loop
// device and the file are removed at cleanup, even when the test fails.
func XFS(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "mkfs.xfs", "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	f, err := os.OpenFile(img, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	run(t, "mkfs.xfs", "-q", "-m", "reflink=1", img)
	loop := strings.TrimSpace(string(run(t, "losetup", "--find", "--show", img)))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", loop).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v %s", loop, err, out)
		}
	})
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(loop, mnt, "xfs", 0, ""); err != nil {
		t.Fatalf("mount xfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt
}
