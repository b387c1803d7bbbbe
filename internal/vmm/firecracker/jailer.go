package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/storage"
)

// JailerMode says whether Firecracker runs under its jailer.
type JailerMode string

const (
	// JailerAuto jails Firecracker when the jailer binary is found.
	JailerAuto JailerMode = "auto"
	JailerOn   JailerMode = "on"
	JailerOff  JailerMode = "off"
)

// ParseJailerMode accepts "auto", "on" or "off"; "" is auto.
func ParseJailerMode(s string) (JailerMode, error) {
	switch m := JailerMode(s); m {
	case "", JailerAuto:
		return JailerAuto, nil
	case JailerOn, JailerOff:
		return m, nil
	}
	return "", errdefs.InvalidArgument("jailer mode %q: want auto, on or off", s)
}

// Paths inside the jail, as the jailed Firecracker sees them (its root is
// the jail's root directory). They are short and fixed, so a jailed VM's
// socket paths never approach the unix socket limit.
const (
	jailAPISock = "/api.socket"
	jailVsock   = "/vsock.sock"
	jailKernel  = "/vmlinux"
	jailInitrd  = "/initrd"
	jailRootfs  = "/rootfs"
)

// jailIDPattern is the jailer's rule for --id (jailer.md): alphanumeric
// characters and hyphens, at most 64 of them. Firecracker's own --id
// follows the same rule.
var jailIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

func checkInstanceID(id string) error {
	if !jailIDPattern.MatchString(id) {
		return errdefs.InvalidArgument("vm id %q cannot be a Firecracker instance id: it must be 1 to 64 letters, digits or hyphens", id)
	}
	return nil
}

// jail is one VM's jail as jailer.md lays it out:
// <chroot_base>/<exec_file_name>/<id>/root is the jailed process's root.
type jail struct {
	base     string // --chroot-base-dir
	execFile string // --exec-file, absolute
	id       string // --id
	uid, gid int    // the VM's own user (Driver.jailUser)
}

// dir is <chroot_base>/<exec_file_name>/<id>, everything the jail owns.
func (j jail) dir() string {
	return filepath.Join(j.base, filepath.Base(j.execFile), j.id)
}

// root is <chroot_dir>, the jailed Firecracker's "/".
func (j jail) root() string { return filepath.Join(j.dir(), "root") }

// host maps a path inside the jail to the same file seen from the host.
func (j jail) host(inJail string) string { return filepath.Join(j.root(), inJail) }

// args is the jailer command line (jailer.md, "Jailer Usage"). No
// --daemonize and no --new-pid-ns: the jailer then execs Firecracker in
// place, so the pid banger spawned is Firecracker's pid and its stdout (the
// guest console) stays on the VM log. --cgroup-version 2 with no --cgroup
// creates no cgroup. The jailer itself passes --id to Firecracker; fcArgs
// follow "--".
func (j jail) args(fcArgs []string) []string {
	args := []string{
		"--id", j.id,
		"--exec-file", j.execFile,
		"--uid", strconv.Itoa(j.uid),
		"--gid", strconv.Itoa(j.gid),
		"--cgroup-version", "2",
		"--chroot-base-dir", j.base,
		"--",
	}
	return append(args, fcArgs...)
}

// prepare builds the jail's root before the jailer runs (the jailer leaves
// an existing root in place) and puts the VM's files in it:
//
//   - kernel and initrd: a hard link when they are on the chroot base's
//     filesystem and the jail user can already read them, else a private
//     copy owned by the jail user. Image files are shared by VMs, so their
//     owner and mode are never changed.
//   - root disk: it must be the VM's real disk, since the guest writes to
//     it. A regular file is hard-linked and the inode lent to the jail
//     user (the jailed Firecracker opens it read-write); remove, which
//     Cleanup runs, gives it back (giveBack). A block device gets
//     a device node with the same numbers. A bind mount is not used: the
//     jailer bind-mounts <chroot_dir> onto itself without MS_REC, so a mount
//     below it would not be visible inside the jail, and removing the jail
//     with a mount still in place would delete the real disk through it.
//     A copy is not used either: the guest's writes would land in the copy.
func (j jail) prepare(kernel, initrd, rootfs string) error {
	if err := j.remove(); err != nil { // a stale jail, its disk given back
		return fmt.Errorf("stale jail: %w", err)
	}
	if err := os.MkdirAll(j.root(), 0o700); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	if err := j.placeReadOnly(kernel, j.host(jailKernel)); err != nil {
		return fmt.Errorf("put kernel in jail: %w", err)
	}
	if initrd != "" {
		if err := j.placeReadOnly(initrd, j.host(jailInitrd)); err != nil {
			return fmt.Errorf("put initrd in jail: %w", err)
		}
	}
	if err := j.placeDisk(rootfs, j.host(jailRootfs)); err != nil {
		return err
	}
	return nil
}

func (j jail) placeReadOnly(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		fi, err := os.Stat(dst)
		if err != nil {
			return err
		}
		if readableBy(fi, j.uid, j.gid) {
			return nil
		}
		if err := os.Remove(dst); err != nil {
			return err
		}
	} else if !errors.Is(err, unix.EXDEV) {
		return err
	}
	// Read-only for the jailed user: a reflink or sparse copy (a disk's holes
	// stay holes).
	if err := storage.CopyFile(context.Background(), src, dst, 0o400); err != nil {
		return err
	}
	if err := os.Chown(dst, j.uid, j.gid); err != nil {
		os.Remove(dst)
		return err
	}
	return nil
}

func (j jail) placeDisk(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return errdefs.FailedPrecondition("root disk: %w", err)
	}
	if fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0 {
		st := fi.Sys().(*syscall.Stat_t)
		if err := unix.Mknod(dst, unix.S_IFBLK|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("create root disk node in jail: %w", err)
		}
	} else if err := os.Link(src, dst); err != nil {
		if errors.Is(err, unix.EXDEV) {
			return errdefs.FailedPrecondition("root disk %s is on another filesystem than the jailer's chroot base %s: the jail needs a hard link to the VM's own disk (hint: put the chroot base under banger's state dir)", src, j.base)
		}
		return fmt.Errorf("link root disk into jail: %w", err)
	}
	if err := os.Chown(dst, j.uid, j.gid); err != nil {
		return fmt.Errorf("give root disk to jail user %d:%d: %w", j.uid, j.gid, err)
	}
	return nil
}

// remove gives the VM's disk back (see giveBack) through the jail's link
// to it, then deletes the jail. Everything in it is a link, a copy, a
// device node or a socket, so nothing outside the jail is lost. If the disk
// cannot be given back the jail stays, so that a retry still finds the
// disk. The per-binary directory above the jail is shared by all jails and
// stays: removing it could race with another VM's prepare.
func (j jail) remove() error {
	if err := giveBack(j.host(jailRootfs)); err != nil {
		return fmt.Errorf("give root disk back from jail user (jail %s kept): %w", j.dir(), err)
	}
	if err := os.RemoveAll(j.dir()); err != nil {
		return fmt.Errorf("remove jail: %w", err)
	}
	return nil
}

// giveBack undoes placeDisk's chown: a regular file owned by anyone but
// the daemon's own user and group is given back to them. That is what the
// VM's disk was before it was lent to the jail user, as the daemon creates
// disks itself, as root: so nothing needs recording. A missing file, a
// device node (placeDisk made a new one, the real one was never changed)
// and a file already the daemon's are left alone, so it is idempotent.
func giveBack(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	uid, gid := os.Geteuid(), os.Getegid()
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) == uid && int(st.Gid) == gid {
		return nil
	}
	return os.Lchown(path, uid, gid)
}

// readableBy reports whether a process running as uid:gid (with no
// supplementary groups, as the jailer leaves it) can read the file.
func readableBy(fi os.FileInfo, uid, gid int) bool {
	if uid == 0 {
		return true
	}
	st := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	switch {
	case int(st.Uid) == uid:
		return perm&0o400 != 0
	case int(st.Gid) == gid:
		return perm&0o040 != 0
	default:
		return perm&0o004 != 0
	}
}
