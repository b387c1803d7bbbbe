package guest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
)

// permBits are the mode bits a copy to the guest keeps: permissions,
// setuid, setgid, sticky.
const permBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// hostMode is the mode a file or directory copied from a guest gets on the
// host: its permissions, without setuid and setgid. The copy is owned by
// whoever runs banger, often root, so a guest must not be able to plant a
// setuid-root program (or a setgid one, or a setgid directory) on the
// host. The sticky bit is kept on directories only: there it restricts who
// may delete or rename entries and grants nothing; on a file it means
// nothing on Linux, so it is dropped.
func hostMode(m fs.FileMode) fs.FileMode {
	keep := fs.ModePerm
	if m.IsDir() {
		keep |= fs.ModeSticky
	}
	return m & keep
}

// openSFTP starts the guest's sftp subsystem (openssh-server's
// sftp-server). The returned close ends the client and its session; ctx's
// end closes them too, failing any transfer under way.
func openSFTP(ctx context.Context, c *ssh.Client) (*sftp.Client, func(), error) {
	s, err := c.NewSession()
	if err != nil {
		return nil, nil, fmt.Errorf("open ssh session: %w", err)
	}
	w, err1 := s.StdinPipe()
	r, err2 := s.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		s.Close()
		return nil, nil, err
	}
	if err := s.RequestSubsystem("sftp"); err != nil {
		s.Close()
		return nil, nil, errdefs.FailedPrecondition("start sftp on the guest: %v (hint: the guest needs openssh-server's sftp-server)", err)
	}
	sc, err := sftp.NewClientPipe(r, w)
	if err != nil {
		s.Close()
		return nil, nil, fmt.Errorf("start sftp on the guest: %w", err)
	}
	stop := context.AfterFunc(ctx, func() {
		sc.Close()
		s.Close()
	})
	return sc, func() {
		stop()
		sc.Close()
		s.Close()
	}, nil
}

// CopyTo copies the local file or directory localPath (recursively; modes,
// modification times and symlinks kept; a symlink given as localPath is
// followed) to remotePath on the guest. As with cp, if remotePath is an
// existing directory the copy goes inside it, under localPath's base name.
// Existing files are overwritten.
func CopyTo(ctx context.Context, c *ssh.Client, localPath, remotePath string) error {
	fi, err := os.Stat(localPath)
	if err != nil {
		return err
	}
	sc, closeSFTP, err := openSFTP(ctx, c)
	if err != nil {
		return err
	}
	defer closeSFTP()
	dst := remotePath
	if rfi, err := sc.Stat(remotePath); err == nil && rfi.IsDir() {
		dst = path.Join(remotePath, filepath.Base(filepath.Clean(localPath)))
	}
	cp := &toGuest{sc: sc}
	err = cp.copy(ctx, localPath, dst, fi)
	if err == nil {
		err = cp.finishDirs()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("copy %s to guest:%s: %w", localPath, dst, err)
	}
	return nil
}

type dirMeta struct {
	path string
	fi   fs.FileInfo
}

type toGuest struct {
	sc   *sftp.Client
	dirs []dirMeta // modes and times are set last: a read-only directory must be filled first
}

func (t *toGuest) copy(ctx context.Context, src, dst string, fi fs.FileInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		return t.file(src, dst, fi)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if old, err := t.sc.Lstat(dst); err == nil && !old.IsDir() {
			if err := t.sc.Remove(dst); err != nil {
				return err
			}
		}
		return t.sc.Symlink(target, dst)
	case fi.IsDir():
		if err := t.sc.Mkdir(dst); err != nil {
			if old, serr := t.sc.Lstat(dst); serr != nil || !old.IsDir() {
				return fmt.Errorf("make directory %s: %w", dst, err)
			}
		}
		// Until the end, the directory must be writable by us.
		if err := t.sc.Chmod(dst, 0o700); err != nil {
			return err
		}
		t.dirs = append(t.dirs, dirMeta{dst, fi})
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			efi, err := e.Info()
			if err != nil {
				return err
			}
			if err := t.copy(ctx, filepath.Join(src, e.Name()), path.Join(dst, e.Name()), efi); err != nil {
				return err
			}
		}
		return nil
	}
	return errdefs.NotSupported("%s is %s: only files, directories and symlinks are copied", src, fi.Mode().Type())
}

func (t *toGuest) file(src, dst string, fi fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := t.sc.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s: %w", dst, err)
	}
	if _, err := out.ReadFrom(in); err != nil {
		out.Close()
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := out.Chmod(fi.Mode() & permBits); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return t.sc.Chtimes(dst, fi.ModTime(), fi.ModTime())
}

func (t *toGuest) finishDirs() error {
	for _, d := range slices.Backward(t.dirs) {
		if err := t.sc.Chmod(d.path, d.fi.Mode()&permBits); err != nil {
			return err
		}
		if err := t.sc.Chtimes(d.path, d.fi.ModTime(), d.fi.ModTime()); err != nil {
			return err
		}
	}
	return nil
}

// CopyFrom copies the guest's file or directory remotePath (recursively;
// permissions, modification times and symlinks kept, setuid and setgid
// dropped, see hostMode; a symlink given as remotePath is followed) to
// localPath. As with cp, if localPath is an existing directory the copy
// goes inside it. Inside the copied tree
// nothing is written through a symlink, and names the guest lists are
// checked, so a guest cannot make the copy land outside localPath.
func CopyFrom(ctx context.Context, c *ssh.Client, remotePath, localPath string) error {
	sc, closeSFTP, err := openSFTP(ctx, c)
	if err != nil {
		return err
	}
	defer closeSFTP()
	fi, err := sc.Stat(remotePath)
	if err != nil {
		return fmt.Errorf("guest:%s: %w", remotePath, err)
	}
	dst := localPath
	if lfi, err := os.Stat(localPath); err == nil && lfi.IsDir() {
		base := path.Base(path.Clean(remotePath))
		if safeCopyName(base) != nil {
			return errdefs.InvalidArgument("guest:%s has no file name to copy into directory %s", remotePath, localPath)
		}
		dst = filepath.Join(localPath, base)
	}
	cp := &fromGuest{sc: sc}
	err = cp.copy(ctx, remotePath, dst, fi, true)
	if err == nil {
		err = cp.finishDirs()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("copy guest:%s to %s: %w", remotePath, dst, err)
	}
	return nil
}

type fromGuest struct {
	sc   *sftp.Client
	dirs []dirMeta
}

func safeCopyName(name string) error {
	if name == "" || name == "." || name == ".." || name == "/" || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("the guest listed an unsafe name %q", name)
	}
	return nil
}

func (f *fromGuest) copy(ctx context.Context, src, dst string, fi fs.FileInfo, top bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Inside the tree, an existing symlink at dst is replaced, never followed.
	if !top {
		if old, err := os.Lstat(dst); err == nil && old.Mode()&fs.ModeSymlink != 0 {
			if err := os.Remove(dst); err != nil {
				return err
			}
		}
	}
	switch {
	case fi.Mode().IsRegular():
		return f.file(src, dst, fi, top)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := f.sc.ReadLink(src)
		if err != nil {
			return err
		}
		if old, err := os.Lstat(dst); err == nil && !old.IsDir() {
			if err := os.Remove(dst); err != nil {
				return err
			}
		}
		return os.Symlink(target, dst)
	case fi.IsDir():
		if err := os.Mkdir(dst, 0o700); err != nil {
			old, serr := os.Lstat(dst)
			if top && serr == nil && old.Mode()&fs.ModeSymlink != 0 {
				old, serr = os.Stat(dst)
			}
			if serr != nil || !old.IsDir() {
				return err
			}
			if err := os.Chmod(dst, old.Mode().Perm()|0o700); err != nil {
				return err
			}
		}
		f.dirs = append(f.dirs, dirMeta{dst, fi})
		entries, err := f.sc.ReadDirContext(ctx, src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := safeCopyName(e.Name()); err != nil {
				return err
			}
			if err := f.copy(ctx, path.Join(src, e.Name()), filepath.Join(dst, e.Name()), e, false); err != nil {
				return err
			}
		}
		return nil
	}
	return errdefs.NotSupported("guest:%s is %s: only files, directories and symlinks are copied", src, fi.Mode().Type())
}

func (f *fromGuest) file(src, dst string, fi fs.FileInfo, top bool) error {
	in, err := f.sc.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if !top {
		flags |= syscall.O_NOFOLLOW
	}
	out, err := os.OpenFile(dst, flags, 0o600)
	if err != nil {
		return err
	}
	// A file being overwritten keeps its mode until the Chmod below: clear
	// it first, so that the guest's content is never setuid, not even for
	// a moment.
	if err := out.Chmod(0o600); err != nil {
		out.Close()
		return err
	}
	if _, err := in.WriteTo(out); err != nil {
		out.Close()
		return fmt.Errorf("read guest:%s: %w", src, err)
	}
	if err := out.Chmod(hostMode(fi.Mode())); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chtimes(dst, fi.ModTime(), fi.ModTime())
}

func (f *fromGuest) finishDirs() error {
	for _, d := range slices.Backward(f.dirs) {
		if err := os.Chmod(d.path, hostMode(d.fi.Mode())); err != nil {
			return err
		}
		if err := os.Chtimes(d.path, d.fi.ModTime(), d.fi.ModTime()); err != nil {
			return err
		}
	}
	return nil
}

// CopySpec is a parsed `banger vm cp SRC DST`.
type CopySpec struct {
	VM      string // the guest side's VM
	ToGuest bool   // local to guest; false: guest to local
	Local   string
	Remote  string // absolute path on the guest
}

// ParseCopyArg parses one side of `vm cp`: "NAME:/path" is a path on the
// VM NAME (isRemote); anything else is a local path. As with scp, a colon
// after a slash, or a path starting with "/" or ".", is local (write
// ./a:b for a local file named a:b). A remote side needs a VM name and an
// absolute path.
func ParseCopyArg(s string) (vm, p string, isRemote bool, err error) {
	if s == "" {
		return "", "", false, errdefs.InvalidArgument("empty path")
	}
	colon := strings.IndexByte(s, ':')
	slash := strings.IndexByte(s, '/')
	if colon < 0 || (slash >= 0 && slash < colon) || strings.HasPrefix(s, ".") {
		return "", s, false, nil
	}
	vm, p = s[:colon], s[colon+1:]
	switch {
	case vm == "":
		return "", "", false, errdefs.InvalidArgument("%q has no VM name before ':' (hint: write NAME:/path)", s)
	case strings.ContainsAny(vm, " \t\n"):
		return "", "", false, errdefs.InvalidArgument("%q: VM name %q contains white space", s, vm)
	case p == "":
		return "", "", false, errdefs.InvalidArgument("%q has no path after ':' (hint: write %s:/absolute/path)", s, vm)
	case !strings.HasPrefix(p, "/"):
		return "", "", false, errdefs.InvalidArgument("%q: the path on the VM must be absolute (hint: %s:/home/%s/%s; for a local file with ':' in its name write ./%s)", s, vm, identity.DefaultUser, p, s)
	}
	return vm, p, true, nil
}

// ParseCopyArgs parses `vm cp SRC DST`: exactly one side must be on a VM.
func ParseCopyArgs(src, dst string) (CopySpec, error) {
	svm, spath, sremote, err := ParseCopyArg(src)
	if err != nil {
		return CopySpec{}, err
	}
	dvm, dpath, dremote, err := ParseCopyArg(dst)
	if err != nil {
		return CopySpec{}, err
	}
	switch {
	case sremote && dremote:
		return CopySpec{}, errdefs.InvalidArgument("both %q and %q are on a VM: copying between VMs is not supported (hint: copy through the host)", src, dst)
	case !sremote && !dremote:
		return CopySpec{}, errdefs.InvalidArgument("neither %q nor %q is on a VM (hint: write NAME:/path for the VM's side)", src, dst)
	case sremote:
		return CopySpec{VM: svm, Remote: spath, Local: dpath}, nil
	}
	return CopySpec{VM: dvm, ToGuest: true, Local: spath, Remote: dpath}, nil
}
