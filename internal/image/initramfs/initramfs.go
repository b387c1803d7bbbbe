// Package initramfs builds the small initramfs banger boots its guests with:
// a static busybox, the kernel modules the root disk needs (resolved from the
// kernel's modules.dep), and an /init script that loads them, mounts the root
// disk and switch_roots into it.
//
// Debian 12's kernels ship uncompressed .ko files. Modules compressed with xz
// or gzip are copied as they are: busybox insmod decompresses them itself.
// zstd is refused, as busybox cannot read it.
package initramfs

import (
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/cavaliergopher/cpio"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// DefaultInit is the /init script banger uses. It mounts proc, sys and
// devtmpfs, insmods the files listed in ModuleListPath in order (a failure is
// printed, not fatal), reads root= (default /dev/vda), rootfstype= (ext4),
// rootflags=, init= (/sbin/init) and rootwait= (10 s) from /proc/cmdline,
// waits for the root device for at most rootwait seconds (then powers off),
// mounts it read-write on /newroot, applies banger's config disk (the VM's
// identity files, see internal/identity.ConfigDisk) onto it when one is
// attached, moves /dev, /proc and /sys into it and execs switch_root.
//
//go:embed init.sh
var DefaultInit string

// Features are what DefaultInit does beyond mounting the root, as the image
// manifest records them (api.ImageManifest.InitramfsFeatures).
var Features = []string{api.InitramfsConfigDisk}

// ModuleListPath is the file in the initramfs that lists the module files to
// load, as absolute paths, one a line, in load order.
const ModuleListPath = "/etc/initramfs-modules"

// DefaultApplets are the busybox applets DefaultInit uses; Build links each
// one to /bin/busybox. Links made at build time, rather than
// `busybox --install -s` at boot, keep the archive's contents fixed and
// testable and leave nothing to fail before /init can print.
var DefaultApplets = []string{
	"cat", "chmod", "chown", "cp", "cpio", "dd", "echo", "findfs", "insmod",
	"ls", "mkdir", "mount", "mv", "poweroff", "reboot", "rm", "sh", "sleep",
	"stat", "switch_root", "sync", "umount",
}

// Spec says what goes into an initramfs.
type Spec struct {
	// Init is the content of /init. Empty means DefaultInit.
	Init string
	// Busybox is the host path of a statically linked busybox binary.
	Busybox string
	// Applets are linked to /bin/busybox as /bin/<applet>. Nil means DefaultApplets.
	Applets []string
	// KernelVersion is the kernel release (uname -r), e.g. "6.1.0-56-cloud-amd64".
	KernelVersion string
	// ModulesDir is the host directory the module paths are relative to,
	// usually <root>/lib/modules/<KernelVersion>.
	ModulesDir string
	// Modules are module files relative to ModulesDir, in load order, as
	// returned by Resolve. They land in /lib/modules/<KernelVersion>/.
	Modules []string
}

// Build writes a gzip-compressed newc cpio archive made from spec to w.
// The archive is reproducible: entries have uid/gid 0 and mtime 0.
func Build(w io.Writer, spec Spec) error {
	if spec.Busybox == "" {
		return fmt.Errorf("initramfs: no busybox binary given: %w", errdefs.ErrInvalidArgument)
	}
	if len(spec.Modules) > 0 && (spec.ModulesDir == "" || spec.KernelVersion == "") {
		return fmt.Errorf("initramfs: modules given without ModulesDir and KernelVersion: %w", errdefs.ErrInvalidArgument)
	}
	if spec.KernelVersion != "" && (strings.Contains(spec.KernelVersion, "/") || strings.HasPrefix(spec.KernelVersion, ".")) {
		return fmt.Errorf("initramfs: bad kernel version %q: %w", spec.KernelVersion, errdefs.ErrInvalidArgument)
	}
	initScript := spec.Init
	if initScript == "" {
		initScript = DefaultInit
	}
	applets := spec.Applets
	if applets == nil {
		applets = DefaultApplets
	}

	gz := gzip.NewWriter(w)
	a := &archive{w: cpio.NewWriter(gz), dirs: map[string]bool{"/": true}}

	for _, d := range []string{"/dev", "/proc", "/sys", "/newroot", "/bin", "/etc"} {
		a.dir(d)
	}
	a.file("/init", 0o755, strings.NewReader(initScript), int64(len(initScript)))
	if err := a.hostFile("/bin/busybox", 0o755, spec.Busybox); err != nil {
		return err
	}
	for _, ap := range applets {
		if ap == "" || ap == "busybox" || strings.Contains(ap, "/") {
			return fmt.Errorf("initramfs: bad applet name %q: %w", ap, errdefs.ErrInvalidArgument)
		}
		a.symlink("/bin/"+ap, "busybox")
	}

	var list strings.Builder
	seen := map[string]bool{}
	for _, m := range spec.Modules {
		if err := checkModulePath(m); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if strings.HasSuffix(m, ".ko.zst") {
			return fmt.Errorf("initramfs: module %q is zstd-compressed, which busybox insmod cannot load (hint: decompress it first): %w",
				m, errdefs.ErrNotSupported)
		}
		if seen[m] {
			return fmt.Errorf("initramfs: module %q listed twice: %w", m, errdefs.ErrInvalidArgument)
		}
		seen[m] = true
		dst := path.Join("/lib/modules", spec.KernelVersion, m)
		if err := a.hostFile(dst, 0o644, path.Join(spec.ModulesDir, m)); err != nil {
			return err
		}
		list.WriteString(dst + "\n")
	}
	a.file(ModuleListPath, 0o644, strings.NewReader(list.String()), int64(list.Len()))

	if a.err != nil {
		return fmt.Errorf("initramfs: write archive: %w", a.err)
	}
	if err := a.w.Close(); err != nil {
		return fmt.Errorf("initramfs: close archive: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("initramfs: close gzip: %w", err)
	}
	return nil
}

// archive writes cpio entries, creating parent directories on first use
// (the kernel's unpacker does not create them). The first error sticks.
type archive struct {
	w    *cpio.Writer
	dirs map[string]bool
	err  error
}

func (a *archive) header(h *cpio.Header) bool {
	if a.err != nil {
		return false
	}
	a.parents(h.Name)
	if a.err != nil {
		return false
	}
	h.Name = strings.TrimPrefix(h.Name, "/")
	a.err = a.w.WriteHeader(h)
	return a.err == nil
}

func (a *archive) parents(name string) {
	var missing []string
	for d := path.Dir(name); !a.dirs[d]; d = path.Dir(d) {
		missing = append(missing, d)
	}
	slices.Reverse(missing)
	for _, d := range missing {
		a.dirs[d] = true
		if a.err = a.w.WriteHeader(&cpio.Header{
			Name: strings.TrimPrefix(d, "/"), Mode: cpio.TypeDir | 0o755, Links: 2,
		}); a.err != nil {
			return
		}
	}
}

func (a *archive) dir(name string) {
	if a.dirs[name] {
		return
	}
	a.dirs[name] = true
	a.header(&cpio.Header{Name: name, Mode: cpio.TypeDir | 0o755, Links: 2})
}

func (a *archive) symlink(name, target string) {
	if a.header(&cpio.Header{Name: name, Mode: cpio.TypeSymlink | 0o777, Links: 1, Size: int64(len(target))}) {
		_, a.err = io.WriteString(a.w, target)
	}
}

func (a *archive) file(name string, perm cpio.FileMode, r io.Reader, size int64) {
	if a.header(&cpio.Header{Name: name, Mode: cpio.TypeReg | perm, Links: 1, Size: size}) {
		var n int64
		n, a.err = io.Copy(a.w, r)
		if a.err == nil && n != size {
			a.err = fmt.Errorf("%s: wrote %d bytes, want %d", name, n, size)
		}
	}
}

func (a *archive) hostFile(name string, perm cpio.FileMode, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s is not a regular file: %w", src, errdefs.ErrInvalidArgument)
	}
	a.file(name, perm, f, st.Size())
	return nil
}
