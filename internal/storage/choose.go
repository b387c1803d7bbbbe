package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

// Host is what this machine offers the strategies: found by Probe, or
// written by hand in tests. Each Why says what was found, for doctor and
// for refusals.
type Host struct {
	Reflink    bool   `json:"reflink"`
	ReflinkWhy string `json:"reflink_why"`
	DM         bool   `json:"dm"`
	DMWhy      string `json:"dm_why"`
	QemuImg    bool   `json:"qemu_img"`
	QemuImgWhy string `json:"qemu_img_why"`
	// QCOW2Grow: a qcow2 disk larger than its image can have its ext4
	// grown on the host (qemu-storage-daemon and /dev/fuse).
	QCOW2Grow    bool   `json:"qcow2_grow"`
	QCOW2GrowWhy string `json:"qcow2_grow_why"`
}

// Need is what Choose must know of the VM: its driver and its disk.
type Need struct {
	// VMM is the driver's name, for messages ("qemu", "firecracker").
	VMM string
	// QCOW2 is true when the driver can open a qcow2 disk (QEMU can,
	// Firecracker cannot: it takes raw files and block devices only).
	QCOW2 bool
	// Grow is true when the disk is larger than the image, so its root
	// filesystem must be grown.
	Grow bool
}

// Probe looks at the host: reflink by cloning a scratch file in dir (the
// directory the VM disks live in), device-mapper by its control node and
// tools, qcow2 by qemu-img.
func Probe(ctx context.Context, dir string) Host {
	var h Host
	h.Reflink, h.ReflinkWhy = probeReflink(dir)
	h.DM, h.DMWhy = probeDM(Options{}.dmControl())
	if p, err := exec.LookPath("qemu-img"); err == nil {
		h.QemuImg, h.QemuImgWhy = true, "qemu-img at "+p
	} else {
		h.QemuImgWhy = "qemu-img is not installed (Debian: apt-get install qemu-utils)"
	}
	switch _, err := exec.LookPath("qemu-storage-daemon"); {
	case err != nil:
		h.QCOW2GrowWhy = "qemu-storage-daemon is not installed (Debian: qemu-system-common): a qcow2 disk cannot be larger than its image"
	default:
		if _, err := os.Stat("/dev/fuse"); err != nil {
			h.QCOW2GrowWhy = "/dev/fuse is absent: a qcow2 disk cannot be larger than its image"
		} else {
			h.QCOW2Grow, h.QCOW2GrowWhy = true, "qemu-storage-daemon exports the overlay as a raw file over FUSE for resize2fs"
		}
	}
	return h
}

func probeDM(control string) (bool, string) {
	if _, err := os.Stat(control); err != nil {
		return false, fmt.Sprintf("device-mapper is absent (%s: %v)", control, errors.Unwrap(err))
	}
	for _, tool := range []string{"dmsetup", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false, fmt.Sprintf("device-mapper is present but %s is not installed", tool)
		}
	}
	return true, "device-mapper present (" + control + "), dmsetup and losetup installed"
}

func fsName(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown filesystem"
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	}
	return fmt.Sprintf("filesystem 0x%x", st.Type)
}

// probeReflink clones a scratch file in dir: the only reliable test (XFS
// made without reflink=1 has the same magic as one made with it). A scratch
// file it cannot remove is named in the reason, which doctor shows.
func probeReflink(dir string) (ok bool, why string) {
	fs := fsName(dir)
	src, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false, fmt.Sprintf("cannot probe reflink in %q: %v", dir, err)
	}
	defer removeScratch(src.Name(), &why)
	defer src.Close()
	if _, err := src.Write([]byte("banger reflink probe")); err != nil {
		return false, fmt.Sprintf("cannot probe reflink in %q: %v", dir, err)
	}
	dstPath := filepath.Join(dir, filepath.Base(src.Name())+".clone")
	dst, err := os.OpenFile(dstPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, fmt.Sprintf("cannot probe reflink in %q: %v", dir, err)
	}
	defer removeScratch(dstPath, &why)
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return false, fmt.Sprintf("%s under %s has no reflink (FICLONE: %v)", fs, dir, err)
	}
	return true, fmt.Sprintf("%s under %s clones files (FICLONE)", fs, dir)
}

// removeScratch removes a probe's scratch file; a failure is appended to
// the probe's reason rather than lost.
func removeScratch(path string, why *string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		*why += fmt.Sprintf(" (scratch file %q left behind: %v)", path, err)
	}
}

// Offer is one strategy's availability on this host for a VMM.
type Offer struct {
	Kind   Kind   `json:"kind"`
	OK     bool   `json:"ok"`
	Reason string `json:"reason"`
}

// offer says whether k can run here for v, and why.
func offer(k Kind, v Need, h Host) Offer {
	o := Offer{Kind: k}
	switch k {
	case KindReflink:
		o.OK, o.Reason = h.Reflink, h.ReflinkWhy
	case KindQCOW2:
		switch {
		case !v.QCOW2:
			o.Reason = fmt.Sprintf("the %s driver cannot open a qcow2 disk (raw files and block devices only)", v.VMM)
		case !h.QemuImg:
			o.Reason = h.QemuImgWhy
		case v.Grow && !h.QCOW2Grow:
			o.Reason = h.QCOW2GrowWhy
		default:
			o.OK, o.Reason = true, fmt.Sprintf("the %s driver opens qcow2; %s", v.VMM, h.QemuImgWhy)
		}
	case KindDMSnapshot:
		o.OK, o.Reason = h.DM, h.DMWhy
	case KindSparseCopy:
		o.OK, o.Reason = true, "works on every filesystem; costs the image's data per VM"
	default:
		o.Reason = fmt.Sprintf("unknown disk strategy %q", k)
	}
	return o
}

// Choose resolves want (auto or a concrete kind) for a VM of driver v on
// host h, and says why. An explicit kind that cannot run is refused with
// the reason (errdefs.ErrFailedPrecondition); auto prefers, in order:
// reflink (constant time, raw for any VMM, no device to set up), qcow2
// (constant time, QEMU only), dm-snapshot (constant time, any VMM, but
// loop and dm devices to set up at every start), sparse-copy.
func Choose(want Kind, v Need, h Host) (Kind, string, error) {
	if want == "" || want == KindAuto {
		var skipped []string
		for _, k := range Kinds {
			o := offer(k, v, h)
			if o.OK {
				why := "auto: " + o.Reason
				if len(skipped) > 0 {
					why += " (not " + strings.Join(skipped, "; ") + ")"
				}
				return k, why, nil
			}
			skipped = append(skipped, fmt.Sprintf("%s: %s", k, o.Reason))
		}
		return "", "", fmt.Errorf("no disk strategy can run here: %w", errdefs.ErrFailedPrecondition)
	}
	if _, err := ParseKind(string(want)); err != nil {
		return "", "", err
	}
	o := offer(want, v, h)
	if !o.OK {
		return "", "", fmt.Errorf("disk strategy %q cannot run here: %s (hint: use --disk-strategy auto): %w", want, o.Reason, errdefs.ErrFailedPrecondition)
	}
	return want, "asked for: " + o.Reason, nil
}

// Report lists, for doctor, every strategy and whether this host offers it
// to a VM of driver v, and why not.
func Report(v Need, h Host) []Offer {
	out := make([]Offer, 0, len(Kinds))
	for _, k := range Kinds {
		out = append(out, offer(k, v, h))
	}
	return out
}
