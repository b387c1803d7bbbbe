package storage

import (
	"context"
	"fmt"
	"os"

	"github.com/banger-vm/banger/errdefs"
)

// Kind names a root-disk strategy. It is what the journal, `vm show` and
// the --disk-strategy flags carry.
type Kind string

const (
	// KindAuto lets Choose pick for the host and the VMM.
	KindAuto Kind = "auto"
	// KindQCOW2 is a qcow2 overlay backed by the image's raw root (QEMU only).
	KindQCOW2 Kind = "qcow2"
	// KindReflink is a FICLONE clone of the image's root (XFS with reflink, btrfs).
	KindReflink Kind = "reflink"
	// KindDMSnapshot is a device-mapper snapshot of a read-only loop device
	// of the image, with a per-VM sparse COW file.
	KindDMSnapshot Kind = "dm-snapshot"
	// KindSparseCopy copies the image's allocated extents: works everywhere.
	KindSparseCopy Kind = "sparse-copy"
)

// Kinds lists the concrete strategies in the order Choose prefers them.
var Kinds = []Kind{KindReflink, KindQCOW2, KindDMSnapshot, KindSparseCopy}

// ParseKind checks a --disk-strategy value.
func ParseKind(s string) (Kind, error) {
	if s == "" {
		return KindAuto, nil
	}
	k := Kind(s)
	if k == KindAuto {
		return k, nil
	}
	for _, c := range Kinds {
		if c == k {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown disk strategy %q (hint: one of auto, qcow2, reflink, dm-snapshot, sparse-copy): %w", s, errdefs.ErrInvalidArgument)
}

// Format is how the VMM must read the attached disk.
type Format string

const (
	FormatRaw   Format = "raw"
	FormatQCOW2 Format = "qcow2"
)

// Disk names one VM's root disk. The same value is passed to every call.
type Disk struct {
	// VMID is the VM's id; dm-snapshot names its devices after its short form.
	VMID string
	// Image is the absolute path of the image's root filesystem (raw ext4).
	// No strategy ever opens it writable; it may be mode 0444.
	Image string
	// Path is the VM's own file: the qcow2 overlay, the reflink clone, the
	// copy, or the dm-snapshot COW file. It lives in the VM's directory.
	Path string
	// Size is the disk size in bytes the guest sees, at least the image's
	// size; when larger, the root filesystem is grown to fill it.
	Size int64
}

// Attachment is what the VMM opens at start, read-write.
type Attachment struct {
	// Path is a file (qcow2, reflink, sparse-copy) or a block device
	// (/dev/mapper/fc-rootfs-<short> for dm-snapshot).
	Path   string
	Format Format
}

// Backend makes, attaches, clones and removes VM root disks over read-only
// images. Each backend owns every host object it makes (files, loop and dm
// devices, temporary mounts) and Remove (or Detach for what lives only
// while the VM runs) is their one cleanup.
type Backend interface {
	Kind() Kind
	// Create makes d.Path at vm create. On error nothing is left behind.
	Create(ctx context.Context, d Disk) error
	// Attach returns what the VMM opens at start, setting up any device
	// first. It is idempotent: after a daemon restart it finds what is
	// already set up and returns the same path.
	Attach(ctx context.Context, d Disk) (Attachment, error)
	// Detach releases what Attach set up, at stop; detaching a disk that is
	// not attached is not an error.
	Detach(ctx context.Context, d Disk) error
	// Clone makes dst a disk of the same backend holding d's content at this
	// instant; the VM must not be writing (stopped or paused). dst is then
	// used as the Path of another Disk over the same image.
	Clone(ctx context.Context, d Disk, dst string) error
	// Remove detaches and deletes the disk; a missing disk is not an error.
	Remove(ctx context.Context, d Disk) error
}

// New returns the backend of a concrete kind.
func New(k Kind, o Options) (Backend, error) {
	switch k {
	case KindQCOW2:
		return &QCOW2{opts: o}, nil
	case KindReflink:
		return &ReflinkDisk{opts: o}, nil
	case KindDMSnapshot:
		return &DMSnapshot{opts: o}, nil
	case KindSparseCopy:
		return &CopyDisk{opts: o}, nil
	}
	return nil, fmt.Errorf("disk strategy %q has no backend (hint: resolve auto with Choose first): %w", k, errdefs.ErrInvalidArgument)
}

// FileName is the name of a VM's disk file under strategy k, in the VM's
// directory: the format shows in the name.
func FileName(k Kind) string {
	switch k {
	case KindQCOW2:
		return "rootfs.qcow2"
	case KindDMSnapshot:
		return "rootfs.cow"
	}
	return "rootfs.ext4"
}

// imageSize checks the image and the requested size and returns the
// image's size.
func imageSize(d Disk) (int64, error) {
	fi, err := os.Stat(d.Image)
	if err != nil {
		return 0, fmt.Errorf("image root filesystem: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("image root filesystem %q is not a regular file: %w", d.Image, errdefs.ErrInvalidArgument)
	}
	if d.Size < fi.Size() {
		return 0, fmt.Errorf("disk size %d is smaller than the image's root filesystem (%d bytes) (hint: ask for at least the image's size): %w", d.Size, fi.Size(), errdefs.ErrInvalidArgument)
	}
	return fi.Size(), nil
}
