// Package testimage builds, and caches, the small bootable guest the
// end-to-end tests run: Debian's cloud kernel, an initramfs made by
// internal/image/initramfs, and a 64 MiB ext4 root disk holding a static
// busybox whose init prints BootMarker at boot and, on Ctrl-Alt-Del, prints
// ShutdownMarker and powers off.
//
// It is test-only code. It needs apt-get, apt-cache, dpkg-deb, mkfs.ext4 and
// a static busybox on the host (CheckHost says what is missing).
package testimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/banger-vm/banger/internal/image/initramfs"
	"github.com/banger-vm/banger/internal/image/vmlinux"
	"github.com/banger-vm/banger/internal/system"
)

const (
	// BootMarker starts the line the guest prints on its console at every
	// boot, after it has persisted the boot counter: "BANGER-TEST-BOOT count=N".
	BootMarker = "BANGER-TEST-BOOT"
	// ShutdownMarker is printed on the console when the guest receives
	// Ctrl-Alt-Del, just before it syncs, remounts / read-only and powers off.
	ShutdownMarker = "BANGER-TEST-SHUTDOWN"
	// BootCountPath is the guest file holding the number of boots so far.
	BootCountPath = "/var/boot-count"

	// KernelPackage is the Debian metapackage the kernel comes from.
	KernelPackage = "linux-image-cloud-amd64"
	// DefaultCacheDir is where tests keep the image unless told otherwise.
	DefaultCacheDir = "/var/cache/banger-test"
	// RootfsSize is the size of the root disk image.
	RootfsSize = 64 << 20
)

// Modules are the kernel modules the initramfs loads: virtio over PCI (QEMU
// q35, Firecracker --enable-pci) and over MMIO (Firecracker, QEMU microvm),
// the block and net drivers, and ext4 (built into Debian's kernel; skipped
// if so).
var Modules = []string{"virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "ext4"}

// Image is a bootable guest. Rootfs is the pristine cached disk: the guest
// writes to its root disk, so copy it before booting.
type Image struct {
	Kernel        string // vmlinuz (bzImage), for QEMU -kernel
	Vmlinux       string // the same kernel as an ELF vmlinux, for Firecracker
	Initrd        string // gzip newc cpio
	Rootfs        string // raw ext4, RootfsSize bytes
	KernelVersion string // uname -r of the guest, e.g. 6.1.0-56-cloud-amd64
}

// BootLine is the exact console line of the n-th boot.
func BootLine(n int) string { return fmt.Sprintf("%s count=%d", BootMarker, n) }

var bootLineRE = regexp.MustCompile(regexp.QuoteMeta(BootMarker) + ` count=(\d+)`)

// LastBootCount returns the count of the last boot line in console output.
func LastBootCount(console []byte) (n int, ok bool) {
	all := bootLineRE.FindAllSubmatch(console, -1)
	if len(all) == 0 {
		return 0, false
	}
	n, err := strconv.Atoi(string(all[len(all)-1][1]))
	return n, err == nil
}

// CheckHost reports every host tool Build needs and cannot find.
func CheckHost() error {
	var errs []error
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			errs = append(errs, fmt.Errorf("%s not found (hint: apt-get install apt dpkg e2fsprogs)", tool))
		}
	}
	if _, err := findBusybox(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// findBusybox returns a statically linked busybox: the guest has no libc.
func findBusybox() (string, error) {
	p, err := exec.LookPath("busybox")
	if err != nil {
		return "", errors.New("busybox not found (hint: apt-get install busybox-static)")
	}
	p, err = filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("busybox: %w", err)
	}
	f, err := elf.Open(p)
	if err != nil {
		return "", fmt.Errorf("busybox %s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return "", fmt.Errorf("busybox %s is dynamically linked (hint: apt-get install busybox-static)", p)
		}
	}
	return p, nil
}

// Build returns the test image, building into cacheDir whatever is missing.
// Every artefact is built under a temporary name and renamed into place, so
// an interrupted build never leaves a file that looks complete; a lock file
// serialises concurrent builds.
func Build(ctx context.Context, cacheDir string) (Image, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Image{}, fmt.Errorf("testimage: %w", err)
	}
	unlock, err := system.LockFile(ctx, filepath.Join(cacheDir, ".lock"))
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	cleanTemps(cacheDir)

	busybox, err := findBusybox()
	if err != nil {
		return Image{}, fmt.Errorf("testimage: %w", err)
	}
	bbSum, err := fileSum(busybox)
	if err != nil {
		return Image{}, fmt.Errorf("testimage: %w", err)
	}

	kdir, err := ensureKernel(ctx, cacheDir, busybox)
	if err != nil {
		return Image{}, err
	}
	kver, err := os.ReadFile(filepath.Join(kdir, "kernel-version"))
	if err != nil {
		return Image{}, fmt.Errorf("testimage: cached kernel %s: %w", kdir, err)
	}
	img := Image{Kernel: filepath.Join(kdir, "vmlinuz"), KernelVersion: strings.TrimSpace(string(kver))}

	if img.Vmlinux, err = ensureVmlinux(img.Kernel); err != nil {
		return Image{}, err
	}
	if img.Initrd, err = ensureInitrd(cacheDir, kdir, img.KernelVersion, busybox, bbSum); err != nil {
		return Image{}, err
	}
	if img.Rootfs, err = ensureRootfs(ctx, cacheDir, busybox, bbSum); err != nil {
		return Image{}, err
	}
	return img, nil
}

// ensureVmlinux extracts the ELF vmlinux next to the bzImage, once.
func ensureVmlinux(vmlinuz string) (string, error) {
	out := filepath.Join(filepath.Dir(vmlinuz), "vmlinux")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	tmp := filepath.Join(filepath.Dir(vmlinuz), tmpPrefix+"vmlinux")
	os.Remove(tmp) // an interrupted earlier run's
	if _, _, err := vmlinux.ExtractFile(vmlinuz, tmp); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("testimage: extract vmlinux: %w", err)
	}
	return out, os.Rename(tmp, out)
}

const tmpPrefix = ".tmp-"

// cleanTemps removes what interrupted builds left (the caller holds the lock).
func cleanTemps(cacheDir string) {
	ents, _ := os.ReadDir(cacheDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			os.RemoveAll(filepath.Join(cacheDir, e.Name()))
		}
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// run runs a command (never through a shell) and returns its stdout; on
// failure the error carries the tail of its stderr.
func run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	// A killed test must not leave a download or extraction running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

var pkgNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]+$`)

// resolveKernelPackage turns the metapackage into the concrete package and
// version apt would install, e.g. linux-image-6.1.0-56-cloud-amd64, 6.1.192-2.
func resolveKernelPackage(ctx context.Context) (pkg, version string, err error) {
	out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", KernelPackage)
	if err != nil {
		return "", "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		deps, ok := strings.CutPrefix(sc.Text(), "Depends:")
		if !ok {
			continue
		}
		for _, d := range strings.Split(deps, ",") {
			alt := strings.TrimSpace(strings.Split(d, "|")[0])
			name, rest, _ := strings.Cut(alt, " ")
			if !strings.HasPrefix(name, "linux-image-") || !pkgNameRE.MatchString(name) {
				continue
			}
			if v, ok := strings.CutPrefix(strings.TrimSpace(rest), "(= "); ok {
				version = strings.TrimSuffix(v, ")")
			}
			return name, version, nil
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s: no linux-image-* dependency", KernelPackage)
}

// ensureKernel returns the cache directory holding vmlinuz, kernel-version
// and lib/modules/<kver> (with a modules.dep) of the current cloud kernel.
func ensureKernel(ctx context.Context, cacheDir, busybox string) (string, error) {
	pkg, version, err := resolveKernelPackage(ctx)
	if err != nil {
		// Offline, or no package lists: a kernel cached earlier will do.
		cached, _ := filepath.Glob(filepath.Join(cacheDir, "kernel-*"))
		if len(cached) > 0 {
			sort.Strings(cached)
			return cached[len(cached)-1], nil
		}
		return "", fmt.Errorf("testimage: resolve %s (hint: apt-get update): %w", KernelPackage, err)
	}
	name := "kernel-" + pkg
	spec := pkg
	if version != "" {
		name += "_" + strings.NewReplacer(":", "%3a", "/", "_").Replace(version)
		spec += "=" + version
	}
	final := filepath.Join(cacheDir, name)
	if exists(filepath.Join(final, "kernel-version")) {
		return final, nil
	}

	tmp, err := os.MkdirTemp(cacheDir, tmpPrefix+name+"-")
	if err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt drops privileges to _apt for downloads when the directory allows it.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	if _, err := run(ctx, tmp, "apt-get", "download", "-q", spec); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("testimage: apt-get download %s left %d .deb files", spec, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, tmp, "dpkg-deb", "-x", debs[0], root); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*"))
	if len(vmlinuz) != 1 || len(mods) != 1 {
		return "", fmt.Errorf("testimage: %s: want one vmlinuz and one module tree, found %d and %d", debs[0], len(vmlinuz), len(mods))
	}
	kver := filepath.Base(mods[0])
	if filepath.Base(vmlinuz[0]) != "vmlinuz-"+kver {
		return "", fmt.Errorf("testimage: %s does not match modules %s", vmlinuz[0], kver)
	}
	// Debian's package does not ship modules.dep: its postinst runs depmod.
	// busybox depmod writes the same format, from the modules' own
	// dependency lists, without needing kmod on the host.
	if !exists(filepath.Join(mods[0], "modules.dep")) {
		if _, err := run(ctx, tmp, busybox, "depmod", "-b", root, kver); err != nil {
			return "", fmt.Errorf("testimage: %w", err)
		}
	}
	for _, mv := range [][2]string{
		{vmlinuz[0], filepath.Join(tmp, "vmlinuz")},
		{filepath.Join(root, "lib"), filepath.Join(tmp, "lib")},
	} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			return "", fmt.Errorf("testimage: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, "kernel-version"), []byte(kver+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	os.RemoveAll(root)
	os.Remove(debs[0])
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	return final, nil
}

// ensureInitrd builds the initramfs for the kernel in kdir. Its name carries
// a digest of everything that goes into it, so a change rebuilds it.
func ensureInitrd(cacheDir, kdir, kver, busybox, bbSum string) (string, error) {
	modDir := filepath.Join(kdir, "lib", "modules", kver)
	deps, builtin, err := initramfs.LoadIndex(modDir)
	if err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	mods, err := initramfs.Resolve(deps, builtin, Modules...)
	if err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "initrd v1\n%s\n%s\n%s\n%s\n", kver, bbSum, initramfs.DefaultInit, strings.Join(mods, "\n"))
	final := filepath.Join(cacheDir, "initrd-"+kver+"-"+hex.EncodeToString(h.Sum(nil))[:12]+".img")
	if exists(final) {
		return final, nil
	}
	spec := initramfs.Spec{Busybox: busybox, KernelVersion: kver, ModulesDir: modDir, Modules: mods}
	err = writeAtomic(final, func(w io.Writer) error { return initramfs.Build(w, spec) })
	if err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	return final, nil
}

// writeAtomic writes path through fn under a temporary name in the same
// directory, syncs it and renames it into place.
func writeAtomic(path string, fn func(io.Writer) error) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), tmpPrefix+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err = fn(bw); err != nil {
		return err
	}
	if err = bw.Flush(); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
