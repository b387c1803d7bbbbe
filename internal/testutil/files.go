package testutil

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// FakeImageFiles writes a "kernel" that passes banger's bzImage check and a
// 1 MiB "rootfs" that passes its ext4 check, for unit tests that never boot.
func FakeImageFiles(t testing.TB, dir string) (kernel, rootfs string) {
	t.Helper()
	kernel = filepath.Join(dir, "vmlinuz")
	k := make([]byte, 0x400)
	copy(k[0x202:], "HdrS")
	if err := os.WriteFile(kernel, k, 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs = filepath.Join(dir, "root.ext4")
	r := make([]byte, 1<<20)
	binary.LittleEndian.PutUint16(r[1024+0x38:], 0xef53)
	if err := os.WriteFile(rootfs, r, 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel, rootfs
}

// WriteExecutable writes an executable file (0755) that tests then run.
// It holds syscall.ForkLock while the file is open for writing: otherwise a
// process forked meanwhile by another goroutine (parallel tests) inherits
// the write descriptor until it execs, and running the file fails with
// "text file busy" (ETXTBSY).
func WriteExecutable(path string, data []byte) error {
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(path, 0o755)
}
