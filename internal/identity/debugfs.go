package identity

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/banger-vm/banger/errdefs"
)

// debugfs drives e2fsprogs' debugfs on an unmounted ext2/3/4 image. Nothing
// is mounted, so nothing (loop device, mount point) can leak.
//
// Safety of the command stream: debugfs splits its command lines on white
// space and quotes, so every path that goes into a command is checked by
// safePath (absolute, clean, components of [A-Za-z0-9._+@-] not starting
// with '-'), numbers are formatted by us, and file contents never go into
// commands: they are written to files in a private work directory, which is
// debugfs' working directory, and named by fixed relative names ("c0",
// "c1"...). The image path is an argument of exec (no shell) made absolute,
// so it cannot be read as an option either.
//
// debugfs exits 0 even when a command fails; failures are reported on
// stderr. So a session's stderr must be empty apart from the version
// banner, and the caller only issues commands that must succeed (it
// inspects the image first), then reads the result back.
type debugfs struct {
	disk string // absolute
	dir  string // private work directory: content files, dumps, the command file
}

func newDebugfs(disk, dir string) (*debugfs, error) {
	abs, err := filepath.Abs(disk)
	if err != nil {
		return nil, err
	}
	return &debugfs{disk: abs, dir: dir}, nil
}

var debugfsBanner = regexp.MustCompile(`^debugfs [0-9][0-9.]*\b`)

// run executes cmds in one debugfs session (read-write with write) and
// returns its stdout.
func (d *debugfs) run(ctx context.Context, write bool, cmds []string) (string, error) {
	for _, c := range cmds {
		if strings.ContainsAny(c, "\n\r\x00") {
			return "", fmt.Errorf("debugfs command %q: line break or NUL", c) // a bug of ours
		}
	}
	cmdFile := filepath.Join(d.dir, "commands")
	if err := os.WriteFile(cmdFile, []byte(strings.Join(cmds, "\n")+"\n"), 0o600); err != nil {
		return "", err
	}
	args := []string{"-f", "commands", d.disk}
	if write {
		args = append([]string{"-w"}, args...)
	}
	cmd := exec.CommandContext(ctx, "debugfs", args...)
	cmd.Dir = d.dir
	cmd.Env = append(os.Environ(), "DEBUGFS_PAGER=__none__", "PAGER=__none__", "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var complaints []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !debugfsBanner.MatchString(l) {
			complaints = append(complaints, l)
		}
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	if err != nil || len(complaints) > 0 {
		if len(complaints) == 0 {
			complaints = []string{err.Error()}
		}
		return "", fmt.Errorf("debugfs on %s: %s", d.disk, strings.Join(complaints, "; "))
	}
	return stdout.String(), nil
}

// dirent is one entry of `ls -p`.
type dirent struct {
	name     string
	mode     uint32 // with the type bits
	uid, gid uint32
}

const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

func (e dirent) isDir() bool { return e.mode&sIFMT == sIFDIR }

// ls lists the directory dir (which must exist) with `ls -p`, whose lines
// read "/inode/mode/uid/gid/name/size/".
func (d *debugfs) ls(ctx context.Context, dir string) (map[string]dirent, error) {
	if err := safePath(dir); err != nil {
		return nil, err
	}
	cmd := "ls -p " + dir
	out, err := d.run(ctx, false, []string{cmd})
	if err != nil {
		return nil, err
	}
	entries := map[string]dirent{}
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == "" || l == "debugfs: "+cmd {
			continue
		}
		// Any other line must be a whole entry. A name with a line break
		// cannot give one (names hold no '/'), so it is refused here rather
		// than half-read.
		var f []string
		if len(l) > 2 && strings.HasPrefix(l, "/") && strings.HasSuffix(l, "/") {
			f = strings.Split(l[1:len(l)-1], "/")
		}
		if len(f) != 6 {
			return nil, errdefs.FailedPrecondition("unexpected entry in %s of the image: %q (a name with a line break?)", dir, l)
		}
		mode, err1 := strconv.ParseUint(f[1], 8, 32)
		uid, err2 := strconv.ParseUint(f[2], 10, 32)
		gid, err3 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, errdefs.FailedPrecondition("unexpected entry in %s of the image: %q", dir, l)
		}
		if f[4] == "." || f[4] == ".." {
			continue
		}
		entries[f[4]] = dirent{name: f[4], mode: uint32(mode), uid: uint32(uid), gid: uint32(gid)}
	}
	return entries, nil
}

var pathComponent = regexp.MustCompile(`^[A-Za-z0-9._+@][A-Za-z0-9._+@-]*$`)

// safePath accepts the paths banger puts into debugfs commands: absolute,
// clean, every component made of letters, digits and ._+@- (not starting
// with '-', not "." or ".."). Nothing debugfs could read as a separator,
// a quote or an option.
func safePath(p string) error {
	if p == "/" {
		return nil
	}
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || len(p) > 1024 {
		return errdefs.InvalidArgument("path %q: not a clean absolute path", p)
	}
	for _, c := range strings.Split(p[1:], "/") {
		if err := safeName(c); err != nil {
			return errdefs.InvalidArgument("path %q: %w", p, err)
		}
	}
	return nil
}

func safeName(name string) error {
	if name == "." || name == ".." || len(name) > 255 || !pathComponent.MatchString(name) {
		return fmt.Errorf("name %q has characters banger does not write through debugfs (allowed: letters, digits, ._+@-)", name)
	}
	return nil
}
