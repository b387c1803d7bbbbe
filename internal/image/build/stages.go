package build

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/image/initramfs"
	"github.com/banger-vm/banger/internal/image/vmlinux"
	"github.com/banger-vm/banger/internal/storage"
)

// KernelCmdline is the kernel command line the image needs. root= and
// rootfstype= are the initramfs's defaults, spelled out; panic=-1 turns a
// guest panic into a reboot, which ends the VMM (QEMU runs -no-reboot, as
// Firecracker always does); quiet and loglevel=3 keep the kernel's
// messages (slow on an emulated UART) off the console, while
// systemd.show_status=1 keeps systemd's unit lines there, which is how
// a boot is followed on the serial log.
const KernelCmdline = "console=ttyS0 root=/dev/vda rootfstype=ext4 rw panic=-1 quiet loglevel=3 systemd.show_status=1"

// kernel moves the root's /boot/vmlinuz-* out as the QEMU kernel, extracts
// the ELF vmlinux from it, and removes what the root no longer needs in
// /boot (the initrd Debian's hooks made, System.map) and the /vmlinuz
// and /initrd.img links. /lib/modules stays: udev loads modules from it.
func (b *builder) kernel(ctx context.Context) error {
	found, _ := filepath.Glob(filepath.Join(b.root, "boot", "vmlinuz-*"))
	if len(found) != 1 {
		return fmt.Errorf("want exactly one /boot/vmlinuz-* in the root from %s, found %d", b.spec.KernelPackage, len(found))
	}
	b.kernelVersion = strings.TrimPrefix(filepath.Base(found[0]), "vmlinuz-")
	if fi, err := os.Stat(filepath.Join(b.modulesDir(), "modules.builtin")); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("kernel %s has no module tree in /lib/modules: %w", b.kernelVersion, err)
	}
	vmlinuz := filepath.Join(b.out, ArtifactVmlinuz)
	if err := os.Rename(found[0], vmlinuz); err != nil {
		return err
	}
	if err := os.Chmod(vmlinuz, 0o644); err != nil {
		return err
	}
	if err := image.CheckKernel(vmlinuz); err != nil {
		return err
	}
	info, compression, err := vmlinux.ExtractFile(vmlinuz, filepath.Join(b.out, ArtifactVmlinux))
	if err != nil {
		return noSpace(err, b.work, 100<<20)
	}
	b.manifest.KernelVersion = b.kernelVersion
	b.manifest.KernelCompression = compression
	b.manifest.KernelEntry = info.Entry
	b.manifest.PVHEntry = info.PVHEntry
	b.progress(Event{Stage: StageKernel, Status: StatusProgress,
		Detail: fmt.Sprintf("%s: %s bzImage, vmlinux PVH entry %#x", b.kernelVersion, compression, info.PVHEntry)})

	var rm []string
	for _, pat := range []string{"boot/initrd.img-*", "boot/System.map-*", "vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"} {
		m, _ := filepath.Glob(filepath.Join(b.root, pat))
		rm = append(rm, m...)
	}
	for _, p := range rm {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

func (b *builder) modulesDir() string {
	return filepath.Join(b.root, "lib", "modules", b.kernelVersion)
}

// initramfs makes initrd.img: busybox, InitramfsModules and their
// dependencies (from the kernel's modules.dep, made with busybox depmod if
// the package shipped none), and internal/image/initramfs's /init.
func (b *builder) initramfs(ctx context.Context) error {
	modDir := b.modulesDir()
	if _, err := os.Stat(filepath.Join(modDir, "modules.dep")); errors.Is(err, fs.ErrNotExist) {
		if err := (command{name: b.busybox, args: []string{"depmod", "-b", b.root, b.kernelVersion}}).run(ctx); err != nil {
			return fmt.Errorf("no modules.dep, and busybox depmod failed: %w", err)
		}
	}
	deps, builtin, err := initramfs.LoadIndex(modDir)
	if err != nil {
		return err
	}
	mods, err := initramfs.Resolve(deps, builtin, InitramfsModules...)
	if err != nil {
		return err
	}
	// busybox insmod reads plain, gzip and xz modules; zstd ones are
	// decompressed into a staging tree.
	srcDir := modDir
	if hasZstd(mods) {
		srcDir = filepath.Join(b.work, "initramfs-modules")
		if mods, err = decompressZstd(modDir, srcDir, mods); err != nil {
			return noSpace(err, b.work, 50<<20)
		}
	}
	b.manifest.InitramfsModules = mods
	b.manifest.InitramfsFeatures = slices.Clone(initramfs.Features)
	dst := filepath.Join(b.out, ArtifactInitrd)
	err = writeFile(dst, func(w io.Writer) error {
		return initramfs.Build(w, initramfs.Spec{
			Busybox: b.busybox, KernelVersion: b.kernelVersion, ModulesDir: srcDir, Modules: mods,
		})
	})
	if err != nil {
		return noSpace(err, b.work, 50<<20)
	}
	return image.CheckInitrd(dst)
}

func hasZstd(mods []string) bool {
	for _, m := range mods {
		if strings.HasSuffix(m, ".ko.zst") {
			return true
		}
	}
	return false
}

func decompressZstd(srcDir, dstDir string, mods []string) ([]string, error) {
	out := make([]string, len(mods))
	for i, m := range mods {
		name := strings.TrimSuffix(m, ".zst")
		out[i] = name
		dst := filepath.Join(dstDir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		err := writeFile(dst, func(w io.Writer) error {
			in, err := os.Open(filepath.Join(srcDir, m))
			if err != nil {
				return err
			}
			defer in.Close()
			if name == m {
				_, err = io.Copy(w, in)
				return err
			}
			z, err := zstd.NewReader(in)
			if err != nil {
				return err
			}
			defer z.Close()
			_, err = io.Copy(w, z)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", m, err)
		}
	}
	return out, nil
}

// writeFile writes path (new, 0644) through fn; on error it is removed.
func writeFile(path string, fn func(io.Writer) error) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := fn(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// filesystem checks that the root fits the requested size, records the
// packages, and makes rootfs.ext4 with mkfs.ext4 -d (as root:
// ownership and modes are kept).
func (b *builder) filesystem(ctx context.Context) error {
	usage, err := treeUsage(b.root)
	if err != nil {
		return err
	}
	need := ext4Need(usage, b.spec.SizeBytes)
	b.manifest.ContentBytes = usage.bytes
	if need > b.spec.SizeBytes {
		return errdefs.InvalidArgument("image size %s is too small for the image's content (%s in %d files): it needs at least %s (hint: --size %dM or more)",
			ibytes(b.spec.SizeBytes), ibytes(usage.bytes), usage.inodes, ibytes(need), (need+(1<<20)-1)>>20)
	}
	pkgs, err := installedPackages(ctx, b.root)
	if err != nil {
		return err
	}
	b.manifest.Packages = pkgs
	if p, ok := b.manifest.Package(b.spec.KernelPackage); ok {
		b.manifest.KernelPackageVersion = p.Version
	}

	if free, err := freeBytes(b.out); err == nil && free < usage.bytes+(64<<20) {
		return errdefs.FailedPrecondition("no space left in %s: need about %s, %s free",
			b.out, ibytes(usage.bytes+(64<<20)), ibytes(free))
	}

	args := []string{"-q", "-F", "-t", "ext4", "-L", RootLabel, "-d", b.root}
	if old, _ := kernelBefore(b.kernelVersion, 5, 15); old {
		// orphan_file (e2fsprogs 1.47's default) needs Linux 5.15.
		args = append(args, "-O", "^orphan_file,^metadata_csum_seed")
	}
	img := filepath.Join(b.out, ArtifactRootfs)
	args = append(args, img, strconv.FormatInt(b.spec.SizeBytes>>10, 10)+"k")
	b.progress(Event{Stage: StageFilesystem, Status: StatusProgress,
		Detail: fmt.Sprintf("%s of content into a %s ext4 image", ibytes(usage.bytes), ibytes(b.spec.SizeBytes)),
		Done:   0, Total: usage.bytes})
	if err := (command{name: "mkfs.ext4", args: args}).run(ctx); err != nil {
		return noSpace(err, b.out, usage.bytes+(64<<20))
	}
	if _, err := image.CheckExt4(img); err != nil {
		return err
	}
	return nil
}

// kernelBefore reports whether release kver (uname -r) is older than major.minor.
func kernelBefore(kver string, major, minor int) (bool, error) {
	f := strings.SplitN(kver, ".", 3)
	if len(f) < 2 {
		return false, fmt.Errorf("kernel version %q", kver)
	}
	ma, err1 := strconv.Atoi(f[0])
	mi, err2 := strconv.Atoi(strings.TrimFunc(f[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("kernel version %q", kver)
	}
	return ma < major || ma == major && mi < minor, nil
}

type usage struct {
	bytes  int64 // blocks the files take, 4 KiB each
	inodes int64
}

// treeUsage adds up what the root tree takes on ext4 with 4 KiB blocks.
func treeUsage(root string) (usage, error) {
	var u usage
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		u.inodes++
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode().IsRegular():
			// Hard links are counted once per name: the estimate errs high.
			u.bytes += (info.Size() + 4095) &^ 4095
		case info.IsDir():
			u.bytes += 4096
		case info.Mode()&fs.ModeSymlink != 0 && info.Size() >= 60:
			u.bytes += 4096
		}
		return nil
	})
	return u, err
}

// ext4Need estimates the size an ext4 image must have to hold u: the
// content, 5% for indirect blocks, directories and slack, the inode tables
// (one 256-byte inode per 16 KiB, mkfs's default ratio), the journal (up
// to 64 MiB) and 32 MiB of margin.
func ext4Need(u usage, size int64) int64 {
	return u.bytes + u.bytes/20 + size/64 + 64<<20 + 32<<20
}

// Package is one installed Debian package (api.ImagePackage).
type Package = api.ImagePackage

// installedPackages lists the root's installed packages, by name.
func installedPackages(ctx context.Context, root string) ([]Package, error) {
	out, err := outputOf(ctx, "dpkg-query", "--admindir="+filepath.Join(root, "var/lib/dpkg"),
		"-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n")
	if err != nil {
		return nil, err
	}
	var pkgs []Package
	for line := range strings.Lines(string(out)) {
		f := strings.Split(strings.TrimRight(line, "\n"), "\t")
		if len(f) != 4 || !strings.HasPrefix(f[0], "ii") {
			continue
		}
		pkgs = append(pkgs, Package{Name: f[1], Version: f[2], Arch: f[3]})
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("dpkg-query lists no installed package in %s", root)
	}
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	return pkgs, nil
}

// finish checksums the artifacts, moves them into outDir and writes the
// manifest there last.
func (b *builder) finish(ctx context.Context) error {
	var total int64
	for _, name := range ArtifactNames {
		fi, err := os.Stat(filepath.Join(b.out, name))
		if err != nil {
			return err
		}
		total += fi.Size()
	}
	var done int64
	b.manifest.Artifacts = nil
	for _, name := range ArtifactNames {
		a, err := hashFile(ctx, filepath.Join(b.out, name), func(n int64) {
			b.progress(Event{Stage: StageFinish, Status: StatusProgress, Detail: "sha256 " + name, Done: done + n, Total: total})
		})
		if err != nil {
			return err
		}
		done += a.Size
		a.Name = name
		a.File = name
		b.manifest.Artifacts = append(b.manifest.Artifacts, a)
	}
	if err := os.MkdirAll(b.outDir, 0o755); err != nil {
		return err
	}
	for _, name := range ArtifactNames {
		if err := moveFile(filepath.Join(b.out, name), filepath.Join(b.outDir, name)); err != nil {
			return noSpace(err, b.outDir, total)
		}
	}
	b.manifest.DurationSeconds = roundSeconds(b.started)
	data, err := json.MarshalIndent(b.manifest, "", "  ")
	if err != nil {
		return err
	}
	err = writeFile(filepath.Join(b.outDir, ManifestFile), func(w io.Writer) error {
		_, err := w.Write(append(data, '\n'))
		return err
	})
	return noSpace(err, b.outDir, int64(len(data)))
}

func hashFile(ctx context.Context, path string, progress func(int64)) (Artifact, error) {
	f, err := os.Open(path)
	if err != nil {
		return Artifact{}, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 4<<20)
	var n int64
	for i := 0; ; i++ {
		k, err := f.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return Artifact{}, err
		}
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return Artifact{}, err
			}
			progress(n)
		}
	}
	progress(n)
	return Artifact{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// moveFile renames src to dst, or copies it across filesystems with the
// same sparse copy VM disks use (holes stay holes), then removes src.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := (storage.SparseCopy{}).Create(context.Background(), src, dst, fi.Size()); err != nil {
		return err
	}
	return os.Remove(src)
}
