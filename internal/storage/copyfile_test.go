package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// CopyFile: the copy has src's bytes, the mode asked for (whatever the
// umask), src's holes as holes; an existing dst is refused and left as is.
func TestCopyFileModeContentHolesAndExisting(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	head, tail := bytes.Repeat([]byte("banger"), 1000), []byte("end")
	if _, err := f.WriteAt(head, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(tail, size-int64(len(tail))); err != nil {
		t.Fatal(err)
	}
	f.Close()

	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })
	for _, mode := range []os.FileMode{0o644, 0o400} {
		dst := filepath.Join(dir, "dst-"+mode.String())
		if err := CopyFile(context.Background(), src, dst, mode); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode || fi.Size() != size {
			t.Fatalf("copy: mode %v size %d, want %v %d", fi.Mode().Perm(), fi.Size(), mode, size)
		}
		if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > 4<<20 {
			t.Errorf("copy of a %d-byte file with %d bytes of data takes %d bytes: holes were filled", size, len(head)+len(tail), blocks)
		}
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:len(head)], head) || !bytes.Equal(got[size-len(tail):], tail) || bytes.ContainsAny(got[len(head):size-len(tail)], "\x01banger") {
			t.Fatal("copy differs from src")
		}
	}
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CopyFile(context.Background(), src, existing, 0o600); !errors.Is(err, os.ErrExist) {
		t.Fatalf("copy onto an existing file: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep" {
		t.Fatalf("existing file changed: %q", b)
	}
}
