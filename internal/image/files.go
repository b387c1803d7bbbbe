// Package image builds and imports guest images: a kernel, an optional
// initramfs and an ext4 root filesystem.
package image

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/banger-vm/banger/internal/storage"
)

// CheckKernel accepts an x86 bzImage (what QEMU boots) or an ELF vmlinux
// (what Firecracker boots).
func CheckKernel(path string) error {
	head, err := readHead(path, 0x210)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", path, err)
	}
	if bytes.HasPrefix(head, []byte("\x7fELF")) {
		return nil
	}
	if len(head) >= 0x206 && string(head[0x202:0x206]) == "HdrS" {
		return nil
	}
	return fmt.Errorf("kernel %s is neither an x86 bzImage nor an ELF vmlinux", path)
}

// CheckInitrd accepts a cpio archive, plain or compressed with a format
// Linux unpacks.
func CheckInitrd(path string) error {
	head, err := readHead(path, 8)
	if err != nil {
		return fmt.Errorf("initrd %s: %w", path, err)
	}
	for _, magic := range [][]byte{
		[]byte("070701"), []byte("070702"), // newc cpio
		{0x1f, 0x8b},             // gzip
		{0x28, 0xb5, 0x2f, 0xfd}, // zstd
		{0xfd, '7', 'z', 'X', 'Z'},
		{0x02, 0x21, 0x4c, 0x18}, // lz4 legacy
		[]byte("BZh"),
		{0x5d, 0x00, 0x00}, // lzma
		{0x89, 'L', 'Z', 'O'},
	} {
		if bytes.HasPrefix(head, magic) {
			return nil
		}
	}
	return fmt.Errorf("initrd %s is not a cpio archive (plain, gzip, zstd, xz, lz4, bzip2, lzma or lzo)", path)
}

// CheckExt4 reports whether path holds an ext2/3/4 filesystem, and its size.
func CheckExt4(path string) (int64, error) {
	head, err := readHead(path, 1024+0x3a)
	if err != nil {
		return 0, fmt.Errorf("rootfs %s: %w", path, err)
	}
	if len(head) < 1024+0x3a || binary.LittleEndian.Uint16(head[1024+0x38:]) != 0xef53 {
		return 0, fmt.Errorf("rootfs %s is not an ext4 image (hint: make one with mkfs.ext4 -d DIR FILE SIZE)", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func readHead(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	buf := make([]byte, n)
	k, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("file is empty")
		}
		return nil, err
	}
	return buf[:k], nil
}

// CopyFile copies src to a new file dst (mode 0644), with
// storage.CopyFile: a reflink where it can, else a sparse copy.
func CopyFile(src, dst string) error {
	return storage.CopyFile(context.Background(), src, dst, 0o644)
}

// IsELF reports whether path starts with the ELF magic.
func IsELF(path string) bool {
	head, err := readHead(path, 4)
	return err == nil && bytes.Equal(head, []byte("\x7fELF"))
}
