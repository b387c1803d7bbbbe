package build

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"embed"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
)

// guestFiles are copied into the image root as they are (modes are set by
// guestModes; everything is owned by root).
//
//go:embed guest
var guestFiles embed.FS

var guestModes = map[string]fs.FileMode{
	"etc/sudoers.d/banger": 0o440,
}

// Recipe is a digest of what this builder puts into an image besides the
// packages: the guest files, the customisation script, the package and
// module lists, the dpkg options and the kernel command line. Manifests
// record it, so that an image made by an older banger can be told apart.
func Recipe() string {
	h := sha256.New()
	_ = fs.WalkDir(guestFiles, "guest", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := guestFiles.ReadFile(p)
		fmt.Fprintf(h, "%s %o %d\n%s\n", p, guestModes[strings.TrimPrefix(p, "guest/")], len(data), data)
		return err
	})
	fmt.Fprintf(h, "%s\n%q\n%q\n%q\n%s\n", customizeScript, BasePackages, InitramfsModules, dpkgOptions, KernelCmdline)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// customizeScript runs inside the root at the end of mmdebstrap.
//
//go:embed customize.sh
var customizeScript string

// HostTools are the host commands Build runs.
var HostTools = map[string]string{
	"mmdebstrap": "mmdebstrap",
	"unshare":    "util-linux",
	"mkfs.ext4":  "e2fsprogs",
	"dpkg-query": "dpkg",
	"apt-get":    "apt",
	"busybox":    "busybox-static",
	"tar":        "tar",
}

// workSpaceNeed is about what a default build writes under the work dir:
// the root tree (~400 MiB), the artifacts (~150 MiB besides the ext4
// image, whose used blocks match the tree) and a copy of the packages.
const workSpaceNeed = 1200 << 20

// checkHost checks, before any work, what Build needs of the host, and
// returns the static busybox to use.
func checkHost(spec Spec, outDir string) (string, error) {
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errdefs.FailedPrecondition("building an image needs root (mmdebstrap --mode=root, mkfs.ext4 keeping ownership)"))
	}
	for tool, pkg := range HostTools {
		if _, err := exec.LookPath(tool); err != nil {
			errs = append(errs, errdefs.FailedPrecondition("%s not found (hint: apt-get install %s)", tool, pkg))
		}
	}
	busybox, err := staticBusybox(spec.Busybox)
	if err != nil {
		errs = append(errs, err)
	}
	if free, err := freeBytes(spec.WorkDir); err == nil && free < workSpaceNeed {
		errs = append(errs, errdefs.FailedPrecondition("no space left in %s: need about %s, %s free",
			spec.WorkDir, humanize.IBytes(workSpaceNeed), humanize.IBytes(uint64(free))))
	}
	return busybox, errors.Join(errs...)
}

// staticBusybox returns path (or busybox on PATH) if it is a statically
// linked executable: the initramfs has no libc.
func staticBusybox(path string) (string, error) {
	if path == "" {
		p, err := exec.LookPath("busybox")
		if err != nil {
			return "", errdefs.FailedPrecondition("busybox not found (hint: apt-get install busybox-static)")
		}
		path = p
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", errdefs.FailedPrecondition("busybox %s: %w", path, err)
	}
	f, err := elf.Open(real)
	if err != nil {
		return "", errdefs.FailedPrecondition("busybox %s: %w", real, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errdefs.FailedPrecondition("busybox %s is dynamically linked (hint: apt-get install busybox-static)", real)
		}
	}
	return real, nil
}

// dpkgOptions keep documentation out of the image (what a throwaway VM
// never reads), copyright files excepted.
var dpkgOptions = []string{
	"path-exclude=/usr/share/man/*",
	"path-exclude=/usr/share/info/*",
	"path-exclude=/usr/share/doc/*",
	"path-include=/usr/share/doc/*/copyright",
	"path-exclude=/usr/share/locale/*",
	"path-include=/usr/share/locale/locale.alias",
	"path-exclude=/usr/share/lintian/*",
}

// cacheDir is where the build's .deb files are kept: per release (a
// release's packages are no use to another), in the layout of
// /var/cache/apt so that mmdebstrap's sync-in can copy it as it is.
func (b *builder) cacheDir() string {
	return filepath.Join(b.spec.CacheDir, b.spec.Release)
}

// mmdebstrapArgs is the command line of the packages stage, run under
// `unshare --mount --propagation private`: mmdebstrap's mounts (/proc,
// /sys, /dev in the root) live in a mount namespace that dies with it.
// No hook is shell text made from the spec: the cache is copied with
// mmdebstrap's own sync-in/sync-out, the guest files with sync-in, and the
// customisation is the fixed customize.sh.
func (b *builder) mmdebstrapArgs(guestDir string) []string {
	args := []string{
		"--mount", "--propagation", "private", "--",
		"mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
		"--include=" + strings.Join(b.spec.allPackages(), ","),
		`--aptopt=Acquire::Retries "3"`,
	}
	for _, o := range dpkgOptions {
		args = append(args, "--dpkgopt="+o)
	}
	if b.spec.CacheDir != "" {
		args = append(args,
			// Keep the downloaded packages until sync-out copies them.
			"--skip=essential/unlink",
			"--setup-hook=sync-in "+b.cacheDir()+" /var/cache/apt/",
		)
	}
	args = append(args,
		"--customize-hook=sync-in "+guestDir+" /",
		`--customize-hook=chroot "$1" /bin/sh /banger-customize.sh`,
	)
	if b.spec.CacheDir != "" {
		args = append(args, "--customize-hook=sync-out /var/cache/apt/archives "+filepath.Join(b.work, "debs"))
	}
	args = append(args, b.spec.Release, b.root)
	return append(args, b.spec.sources()...)
}

var unknownPackageRE = regexp.MustCompile(`E: Unable to locate package (\S+)`)

// packages makes the root tree with mmdebstrap.
func (b *builder) packages(ctx context.Context) error {
	guestDir := filepath.Join(b.work, "guest")
	if err := b.writeGuestFiles(guestDir); err != nil {
		return noSpace(err, b.work, workSpaceNeed)
	}
	if b.spec.CacheDir != "" {
		for _, d := range []string{filepath.Join(b.cacheDir(), "archives"), filepath.Join(b.work, "debs")} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("package cache: %w", err)
			}
		}
		unlock, err := system.LockFile(ctx, filepath.Join(b.spec.CacheDir, ".lock"))
		if err != nil {
			return err
		}
		defer unlock()
	}
	var step int64
	var unknown []string
	err := command{
		name: "unshare",
		args: b.mmdebstrapArgs(guestDir),
		onLine: func(line string) {
			if m := unknownPackageRE.FindStringSubmatch(line); m != nil {
				unknown = append(unknown, m[1])
			}
			if msg, ok := strings.CutPrefix(line, "I: "); ok {
				step++
				b.progress(Event{Stage: StagePackages, Status: StatusProgress, Detail: msg, Done: step})
			}
		},
	}.run(ctx)
	if err != nil {
		if len(unknown) > 0 && ctx.Err() == nil {
			return errdefs.NotFound("package %s not found in Debian %s (%s): %w",
				strings.Join(quoteAll(unknown), ", "), b.spec.Release, b.spec.Mirror, err)
		}
		return noSpace(err, b.work, workSpaceNeed)
	}
	if b.spec.CacheDir != "" {
		if err := b.storeDebs(); err != nil {
			// The image is fine; the next build downloads again.
			b.log.Warn("image build: could not update the package cache", "dir", b.cacheDir(), "err", err)
		}
	}
	return b.installAgent()
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// writeGuestFiles lays out guest/ and customize.sh in dir, for sync-in.
func (b *builder) writeGuestFiles(dir string) error {
	err := fs.WalkDir(guestFiles, "guest", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, "guest"), "/")
		dst := filepath.Join(dir, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := guestFiles.ReadFile(p)
		if err != nil {
			return err
		}
		mode, ok := guestModes[rel]
		if !ok {
			mode = 0o644
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			return err
		}
		return os.Chmod(dst, mode) // not subject to the umask
	})
	if err != nil {
		return fmt.Errorf("guest files: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "banger-customize.sh"), []byte(customizeScript), 0o755)
}

// storeDebs moves the packages the build used into the cache and drops
// the cached versions they supersede (same package and architecture).
func (b *builder) storeDebs() error {
	src := filepath.Join(b.work, "debs")
	dst := filepath.Join(b.cacheDir(), "archives")
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	used := map[string]string{} // package_arch -> file name
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".deb") {
			continue
		}
		used[debKey(name)] = name
		if err := os.Rename(filepath.Join(src, name), filepath.Join(dst, name)); err != nil {
			return err
		}
	}
	cached, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	for _, e := range cached {
		if cur, ok := used[debKey(e.Name())]; ok && cur != e.Name() && strings.HasSuffix(e.Name(), ".deb") {
			if err := os.Remove(filepath.Join(dst, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// debKey is "package_arch" of an apt archive file name package_version_arch.deb.
func debKey(name string) string {
	f := strings.Split(strings.TrimSuffix(name, ".deb"), "_")
	if len(f) != 3 {
		return name
	}
	return f[0] + "_" + f[2]
}
