// Package storage makes each VM's writable root disk from its image's root
// filesystem. Strategies sit behind one interface; this one is a sparse
// copy, which works on every filesystem.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// Strategy creates and removes a VM's root disk.
type Strategy interface {
	Name() string
	// Create makes dst from the image src, grown to size bytes (ext4 is
	// resized to fill it) when size is larger than src. On error nothing is
	// left at dst.
	Create(ctx context.Context, src, dst string, size int64) error
	// Remove deletes dst; a missing disk is not an error.
	Remove(ctx context.Context, dst string) error
}

// SparseCopy copies only the allocated extents of the image, so a mostly
// empty 4 GiB image costs what its data costs.
type SparseCopy struct{}

var _ Strategy = SparseCopy{}

func (SparseCopy) Name() string { return "sparse-copy" }

func (SparseCopy) Create(ctx context.Context, src, dst string, size int64) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open image rootfs: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if size < fi.Size() {
		return fmt.Errorf("disk size %d is smaller than the image's root filesystem (%d bytes)", size, fi.Size())
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create vm disk: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := copySparse(ctx, in, out, fi.Size()); err != nil {
		return fmt.Errorf("copy image rootfs: %w", err)
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if size > fi.Size() {
		return growExt4(ctx, dst)
	}
	return nil
}

func (SparseCopy) Remove(_ context.Context, dst string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// copySparse copies the data extents of in (found with SEEK_DATA and
// SEEK_HOLE) to the same offsets of out, leaving holes as holes.
func copySparse(ctx context.Context, in, out *os.File, size int64) error {
	inFd, outFd := int(in.Fd()), int(out.Fd())
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(inFd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(inFd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		if err := copyRange(in, out, inFd, outFd, data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

func copyRange(in, out *os.File, inFd, outFd int, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		c, err := unix.CopyFileRange(inFd, &roff, outFd, &woff, int(min(n, 1<<30)), 0)
		if err != nil || c == 0 {
			// copy_file_range is refused across some filesystems: plain copy.
			_, err := io.Copy(io.NewOffsetWriter(out, off), io.NewSectionReader(in, off, n))
			return err
		}
		off += int64(c)
		n -= int64(c)
	}
	return nil
}

// growExt4 checks and resizes the ext4 filesystem in path to fill the file.
func growExt4(ctx context.Context, path string) error {
	// -p repairs only what is safe; exit codes 0 and 1 mean clean or fixed.
	if out, err := exec.CommandContext(ctx, "e2fsck", "-f", "-p", path).CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			return fmt.Errorf("e2fsck %s: %w: %s", path, err, out)
		}
	}
	if out, err := exec.CommandContext(ctx, "resize2fs", path).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %w: %s", path, err, out)
	}
	return nil
}
