// Package storage makes each VM's writable root disk over its image's root
// filesystem, which stays read-only. Four strategies sit behind Backend:
// qcow2 (an overlay backed by the image; QEMU only), reflink (a FICLONE
// clone; XFS or btrfs), dm-snapshot (a device-mapper snapshot of a
// read-only loop device of the image, set up at start and torn down at
// stop) and sparse-copy (a copy of the image's data; anywhere). Probe finds
// what the host offers, Choose picks one per VM and says why, Report tells
// doctor, FindOrphans/RemoveOrphans clean up after a crash.
//
// Strategy and SparseCopy are the older create/remove interface the daemon
// still calls; Backend replaces them.
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

// Strategy creates and removes a VM's root disk. Deprecated: use Backend;
// kept until the daemon moves to it.
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

func (SparseCopy) Create(ctx context.Context, src, dst string, size int64) error {
	return makeRawDisk(ctx, Disk{Image: src, Path: dst, Size: size}, false)
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
