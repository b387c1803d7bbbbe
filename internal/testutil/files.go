package testutil

import (
	"encoding/binary"
	"os"
	"path/filepath"
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
