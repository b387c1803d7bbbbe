package storage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/internal/testutil"
)

func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestSparseCopyKeepsDataAndHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	// 64 MiB file with data at the start, the middle and the end.
	chunks := map[int64][]byte{0: bytes.Repeat([]byte("a"), 8192), 32 << 20: bytes.Repeat([]byte("b"), 4096), 64<<20 - 4096: bytes.Repeat([]byte("c"), 4096)}
	for off, b := range chunks {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	dst := filepath.Join(dir, "dst")
	if err := (SparseCopy{}).Create(context.Background(), src, dst, 64<<20); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from source")
	}
	if got := allocated(t, dst); got > 1<<20 {
		t.Fatalf("copy allocates %d bytes: holes were filled", got)
	}
	if err := (SparseCopy{}).Create(context.Background(), src, dst, 64<<20); err == nil {
		t.Fatal("create over an existing disk must fail, not overwrite it")
	}
	if err := (SparseCopy{}).Remove(context.Background(), dst); err != nil {
		t.Fatal(err)
	}
	if err := (SparseCopy{}).Remove(context.Background(), dst); err != nil {
		t.Fatalf("removing a missing disk: %v", err)
	}
}

func TestSparseCopyRefusesShrinkAndLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	if err := (SparseCopy{}).Create(context.Background(), src, dst, 1<<19); err == nil || !strings.Contains(err.Error(), "smaller") {
		t.Fatalf("shrink: %v", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Fatal("a failed create left a disk behind")
	}
}

func TestSparseCopyGrowsExt4(t *testing.T) {
	testutil.RequireTools(t, "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs")
	dir := t.TempDir()
	src := filepath.Join(dir, "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", src, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	dst := filepath.Join(dir, "vm.ext4")
	if err := (SparseCopy{}).Create(context.Background(), src, dst, 96<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("dumpe2fs", "-h", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v %s", err, out)
	}
	// 96 MiB of 1 KiB or 4 KiB blocks.
	if !strings.Contains(string(out), "Block count:              98304") && !strings.Contains(string(out), "Block count:              24576") {
		t.Fatalf("filesystem was not grown to 96 MiB:\n%s", out)
	}
}
