package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

// ReflinkDisk clones the image's root with FICLONE: the clone shares every
// extent with the image until either is written, so it is made in constant
// time and costs nothing on disk. Where the disk is larger than the image,
// the clone is grown and its ext4 resized (that writes only the new groups'
// metadata). Needs a filesystem with reflink (XFS made with reflink=1,
// btrfs) holding both the image and the VM's directory.
type ReflinkDisk struct{ opts Options }

var _ Backend = (*ReflinkDisk)(nil)

func (*ReflinkDisk) Kind() Kind { return KindReflink }

// Create clones the image; a disk larger than the image is cloned from a
// grown copy of the image kept in Options.CacheDir (made once per image and
// size, by clone, truncate and resize2fs) when CacheDir is set, else grown
// in place.
func (r *ReflinkDisk) Create(ctx context.Context, d Disk) error {
	imgSize, err := imageSize(d)
	if err != nil {
		return err
	}
	if d.Size == imgSize || r.opts.CacheDir == "" {
		return makeRawDisk(ctx, d, true)
	}
	base, err := r.grownBase(ctx, d)
	if err != nil {
		return err
	}
	return cloneFile(ctx, base, d.Path, true, 0o600)
}

// grownBase returns the cached grown clone of d.Image at d.Size, mode 0444,
// recording its image in the xattr user.banger.image (for orphan checks).
func (r *ReflinkDisk) grownBase(ctx context.Context, d Disk) (string, error) {
	name := grownLayerName(r.opts.CacheDir, d.Image, d.Size, "raw")
	if fi, err := os.Stat(name); err == nil && fi.Size() == d.Size {
		return name, nil
	}
	if err := os.MkdirAll(r.opts.CacheDir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(r.opts.CacheDir, filepath.Base(name)+".tmp-*")
	if err != nil {
		return "", err
	}
	tmpName := tmp.Name()
	tmp.Close()
	if err := os.Remove(tmpName); err != nil { // only its unique name was wanted
		return "", err
	}
	err = makeRawDisk(ctx, Disk{VMID: d.VMID, Image: d.Image, Path: tmpName, Size: d.Size}, true)
	if err == nil {
		err = unix.Setxattr(tmpName, layerImageXattr, []byte(d.Image), 0)
	}
	if err == nil {
		err = os.Chmod(tmpName, 0o444)
	}
	if err == nil {
		err = os.Rename(tmpName, name)
	}
	if err != nil {
		return "", withRemoved(fmt.Errorf("grow image %q to %d bytes: %w", d.Image, d.Size, err), tmpName)
	}
	r.opts.log().Info("grown image clone cached", "image", d.Image, "size", d.Size, "path", name)
	return name, nil
}

const layerImageXattr = "user.banger.image"

func (*ReflinkDisk) Attach(_ context.Context, d Disk) (Attachment, error) {
	return attachFile(d, FormatRaw)
}

func (*ReflinkDisk) Detach(context.Context, Disk) error { return nil }

func (*ReflinkDisk) Clone(ctx context.Context, d Disk, dst string) error {
	return cloneFile(ctx, d.Path, dst, true, 0o600)
}

func (*ReflinkDisk) Remove(_ context.Context, d Disk) error { return removeFile(d.Path) }

// CopyDisk is today's strategy: a sparse copy of the image's allocated
// extents, then grow. Works everywhere; costs time and space in proportion
// to the image's data.
type CopyDisk struct{ opts Options }

var _ Backend = (*CopyDisk)(nil)

func (*CopyDisk) Kind() Kind { return KindSparseCopy }

func (c *CopyDisk) Create(ctx context.Context, d Disk) error {
	return makeRawDisk(ctx, d, false)
}

func (*CopyDisk) Attach(_ context.Context, d Disk) (Attachment, error) {
	return attachFile(d, FormatRaw)
}

func (*CopyDisk) Detach(context.Context, Disk) error { return nil }

func (*CopyDisk) Clone(ctx context.Context, d Disk, dst string) error {
	return cloneFile(ctx, d.Path, dst, false, 0o600)
}

func (*CopyDisk) Remove(_ context.Context, d Disk) error { return removeFile(d.Path) }

// makeRawDisk makes d.Path a raw copy (reflink or sparse) of the image,
// grown to d.Size. The image is opened read-only.
func makeRawDisk(ctx context.Context, d Disk, reflink bool) (err error) {
	imgSize, err := imageSize(d)
	if err != nil {
		return err
	}
	if err := cloneFile(ctx, d.Image, d.Path, reflink, 0o600); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = withRemoved(err, d.Path)
		}
	}()
	if d.Size == imgSize {
		return nil
	}
	if err := os.Truncate(d.Path, d.Size); err != nil {
		return fmt.Errorf("grow vm disk: %w", err)
	}
	return growExt4(ctx, d.Path)
}

// withRemoved removes path, which a failed step left behind, and returns
// err with any failure to remove it joined: a leftover is never silent.
func withRemoved(err error, path string) error {
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return errors.Join(err, fmt.Errorf("remove %q after the failure: %w", path, rerr))
	}
	return err
}

// cloneFile makes dst (new, with mode) a copy of src: FICLONE when reflink,
// else a sparse copy. src is opened read-only. On error dst is gone.
func cloneFile(ctx context.Context, src, dst string, reflink bool, mode os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %q: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("create %q: %w", dst, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			err = withRemoved(err, dst)
		}
	}()
	if err := out.Chmod(mode); err != nil { // whatever the umask said
		return err
	}
	if reflink {
		if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
			return fmt.Errorf("reflink %q to %q (FICLONE): %w", src, dst, err)
		}
		return nil
	}
	if err := copySparse(ctx, in, out, fi.Size()); err != nil {
		return fmt.Errorf("copy %q: %w", src, err)
	}
	if err := out.Truncate(fi.Size()); err != nil {
		return err
	}
	return out.Sync()
}

// copyFile reflinks src to dst where the filesystem can, else copies it
// sparsely; dst is private to the daemon (0600).
func copyFile(ctx context.Context, src, dst string) error {
	return CopyFile(ctx, src, dst, 0o600)
}

// CopyFile makes dst, a new file with mode (set explicitly, whatever the
// umask), a copy of src: a reflink where the filesystem can, else a copy of
// src's allocated extents only (holes stay holes), synced to disk. dst must
// not exist; on error it is gone. It is banger's one file-copy helper.
func CopyFile(ctx context.Context, src, dst string, mode os.FileMode) error {
	if err := cloneFile(ctx, src, dst, true, mode); err == nil {
		return nil
	} else if errors.Is(err, os.ErrExist) || errors.Is(err, os.ErrNotExist) {
		return err // the copy below would fail the same way
	}
	return cloneFile(ctx, src, dst, false, mode)
}

func attachFile(d Disk, f Format) (Attachment, error) {
	if _, err := os.Stat(d.Path); err != nil {
		return Attachment{}, fmt.Errorf("vm disk %q: %w", d.Path, errors.Join(err, errdefs.ErrNotFound))
	}
	return Attachment{Path: d.Path, Format: f}, nil
}

func removeFile(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
