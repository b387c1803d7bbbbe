package identity

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"

	"github.com/banger-vm/banger/errdefs"
)

// File is one identity file (or directory) as it lands in the guest's root.
type File struct {
	Path     string      // absolute and clean
	Mode     fs.FileMode // permission bits, with fs.ModeDir for a directory
	UID, GID uint32
	Data     []byte // a regular file's content
	// Keep marks a directory whose mode and owner are left as they are when
	// it exists already; it is only made (with Mode and the owner) when
	// missing. A directory without Keep gets Mode and the owner either way.
	Keep bool
}

// HostKeyGlob names the host key files banger removes from /etc/ssh before
// writing its own: the guest presents only the keys banger pinned.
const HostKeyGlob = "/etc/ssh/ssh_host_*"

// Files is id as the files banger writes into the guest's root, a directory
// always before what it holds. u is the account of id.User as the image's
// /etc/passwd says, hosts the image's /etc/hosts (nil when it has none).
// Both writers (ApplyIdentity with debugfs, WriteConfigDisk for the
// initramfs) write exactly this list, and remove every other file matching
// HostKeyGlob.
func files(id Identity, u account, hosts []byte) []File {
	root := func(p string, mode fs.FileMode, data []byte) File {
		return File{Path: p, Mode: mode, Data: data}
	}
	dir := func(p string) File { return File{Path: p, Mode: fs.ModeDir | 0o755, Keep: true} }
	out := []File{
		root("/etc/hostname", 0o644, []byte(id.Hostname+"\n")),
		root("/etc/hosts", 0o644, hostsFile(hosts, id.Hostname)),
		root("/etc/machine-id", 0o444, []byte(id.MachineID+"\n")),
		root("/etc/resolv.conf", 0o644, resolvConf(id.DNS)),
		dir("/etc/systemd"),
		dir("/etc/systemd/network"),
		root(NetworkFile, 0o644, NetworkConfig(id)),
		dir("/etc/ssh"),
	}
	for _, k := range id.HostKeys {
		out = append(out,
			root("/etc/ssh/"+k.File, 0o600, k.Private),
			root("/etc/ssh/"+k.File+".pub", 0o644, k.PublicFile()))
	}
	// The home's parents (root's, 0755) when missing, the home itself the
	// user's 0700 when missing; .ssh always the user's 0700.
	parts := strings.Split(u.home[1:], "/")
	for i := range parts[:len(parts)-1] {
		out = append(out, dir("/"+strings.Join(parts[:i+1], "/")))
	}
	return append(out,
		File{Path: u.home, Mode: fs.ModeDir | 0o700, UID: u.uid, GID: u.gid, Keep: true},
		File{Path: u.home + "/.ssh", Mode: fs.ModeDir | 0o700, UID: u.uid, GID: u.gid},
		File{Path: u.home + "/.ssh/authorized_keys", Mode: 0o600, UID: u.uid, GID: u.gid,
			Data: []byte(strings.TrimSpace(id.AuthorizedKey) + "\n")},
	)
}

// ImageFacts is what the identity files need from an image: the account
// of the guest user and the /etc/hosts to amend. Banger's images are
// immutable, so they can be read once per image (ReadImage) and kept.
type ImageFacts struct {
	User     string
	UID, GID uint32
	Home     string
	Hosts    []byte // the image's /etc/hosts, nil when it has none
}

// ReadImage reads the facts for user from the image's ext4 root file
// imageRoot, read only, with debugfs (its files go in a private directory
// under workDir, removed on return). It takes a few debugfs runs (about
// 100 ms on a busy host): call it once per image, not per VM.
func ReadImage(ctx context.Context, imageRoot, workDir, user string) (ImageFacts, error) {
	if !userRE.MatchString(user) {
		return ImageFacts{}, errdefs.InvalidArgument("guest identity: user %q is not a valid account name", user)
	}
	u, hosts, err := readImage(ctx, imageRoot, workDir, user)
	if err != nil {
		return ImageFacts{}, fmt.Errorf("read image %s: %w", imageRoot, err)
	}
	return ImageFacts{User: u.name, UID: u.uid, GID: u.gid, Home: u.home, Hosts: hosts}, nil
}

// Files returns id as the files banger writes into a guest's root (see
// files), with the account and hosts file of img (from ReadImage).
func Files(id Identity, img ImageFacts) ([]File, error) {
	if err := id.validate(); err != nil {
		return nil, err
	}
	if img.User != id.User {
		return nil, errdefs.InvalidArgument("guest identity: image facts are for user %q, not %q", img.User, id.User)
	}
	if safePath(img.Home) != nil || img.Home == "/" {
		return nil, errdefs.InvalidArgument("guest identity: home directory %q is not a path banger writes", img.Home)
	}
	return files(id, account{name: img.User, uid: img.UID, gid: img.GID, home: img.Home}, img.Hosts), nil
}

// readImage reads the account of user and /etc/hosts from the ext4 image at
// diskPath without writing to it.
func readImage(ctx context.Context, diskPath, workDir, user string) (_ account, _ []byte, err error) {
	if err := checkExtImage(diskPath); err != nil {
		return account{}, nil, err
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		return account{}, nil, errdefs.FailedPrecondition("read the image: debugfs is not installed (hint: apt-get install e2fsprogs)")
	}
	work, err := os.MkdirTemp(workDir, "banger-identity-")
	if err != nil {
		return account{}, nil, err
	}
	defer func() { err = errors.Join(err, removeWork(work)) }()
	d, err := newDebugfs(diskPath, work)
	if err != nil {
		return account{}, nil, err
	}
	v := newImageView(d)
	u, err := v.user(ctx, user)
	if err != nil {
		return account{}, nil, err
	}
	hosts, err := v.readFile(ctx, "/etc/hosts")
	return u, hosts, err
}
