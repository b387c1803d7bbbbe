// Package storagetest is the conformance suite every storage backend
// passes: run against real files, real qemu-img/qemu-io, real loop and dm
// devices, it checks what a VM would observe of its root disk.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/testutil"
)

// ImageBytes is the size of the ext4 image the suite makes.
const ImageBytes = 64 << 20

// Run runs the suite against backend b with its disks and image in dir (a
// directory on the filesystem b needs; the suite makes subdirectories and
// removes them). It needs root (the image is made immutable with chattr +i,
// so even root cannot open it writable: any attempt fails the suite) and
// e2fsprogs.
func Run(t *testing.T, b storage.Backend, dir string) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "mkfs.ext4", "e2fsck", "resize2fs", "chattr", "losetup")
	if b.Kind() == storage.KindQCOW2 {
		testutil.RequireTools(t, "qemu-img", "qemu-io", "qemu-storage-daemon")
	}
	s := newSuite(t, b, dir)
	t.Run("CreateWriteKeepsImage", s.createWriteKeepsImage)
	t.Run("TwoDisksAreIsolated", s.twoDisksAreIsolated)
	t.Run("CloneKeepsTheInstant", s.cloneKeepsTheInstant)
	t.Run("LargerDiskHasLargerFilesystem", s.largerDiskHasLargerFilesystem)
	t.Run("CreateRefusesExistingAndShrink", s.createRefuses)
	t.Run("RemoveLeavesNothing", s.removeLeavesNothing)
	s.checkImage(t)
}

type suite struct {
	b      storage.Backend
	dir    string
	image  string
	sum    [32]byte
	vmsDir string
	n      int
}

func newSuite(t *testing.T, b storage.Backend, dir string) *suite {
	t.Helper()
	s := &suite{b: b, dir: dir}
	imgDir := filepath.Join(dir, "images")
	s.vmsDir = filepath.Join(dir, "vms")
	for _, d := range []string{imgDir, s.vmsDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s.image = filepath.Join(imgDir, "rootfs.ext4")
	t.Cleanup(func() {
		// The image may never have been made immutable (or the
		// filesystem may not support the flag): RemoveAll reports what
		// is really stuck.
		if out, err := exec.Command("chattr", "-i", s.image).CombinedOutput(); err != nil {
			t.Logf("chattr -i %s: %v %s", s.image, err, out)
		}
		for _, d := range []string{imgDir, s.vmsDir} {
			if err := os.RemoveAll(d); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "banger-test", s.image, fmt.Sprint(ImageBytes>>20)+"M")
	// Some real data in the image, at a known place, past the metadata.
	f, err := os.OpenFile(s.image, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 1<<20), dataOff-(1<<20)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chmod(s.image, 0o444); err != nil {
		t.Fatal(err)
	}
	run(t, "chattr", "+i", s.image)
	s.sum = sha(t, s.image)
	return s
}

// dataOff is where the suite writes into disks: inside the image, in
// blocks the fresh ext4 does not use.
const dataOff = 48 << 20

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func sha(t *testing.T, p string) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func (s *suite) checkImage(t *testing.T) {
	t.Helper()
	if sha(t, s.image) != s.sum {
		t.Fatal("the image's sha256 changed: a strategy wrote into the image")
	}
	fi, err := os.Stat(s.image)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 {
		t.Fatalf("image mode is %v, want 0444", fi.Mode().Perm())
	}
}

// disk makes a fresh Disk in its own VM directory, removed at cleanup.
func (s *suite) disk(t *testing.T, size int64) storage.Disk {
	t.Helper()
	s.n++
	id := fmt.Sprintf("%08x%s", 0xb0000000+s.n, "suite")
	vmDir := filepath.Join(s.vmsDir, id)
	if err := os.Mkdir(vmDir, 0o700); err != nil {
		t.Fatal(err)
	}
	d := storage.Disk{VMID: id, Image: s.image, Path: filepath.Join(vmDir, "root.disk"), Size: size}
	t.Cleanup(func() {
		if err := s.b.Remove(context.Background(), d); err != nil {
			t.Errorf("cleanup remove: %v", err)
		}
	})
	return d
}

func (s *suite) create(t *testing.T, size int64) (storage.Disk, storage.Attachment) {
	t.Helper()
	d := s.disk(t, size)
	ctx := context.Background()
	if err := s.b.Create(ctx, d); err != nil {
		t.Fatalf("create: %v", err)
	}
	fi, err := os.Stat(d.Path)
	if err != nil {
		t.Fatalf("create left no disk file: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("disk file mode %v, want 0600", fi.Mode().Perm())
	}
	a, err := s.b.Attach(ctx, d)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	t.Cleanup(func() {
		if err := s.b.Detach(context.Background(), d); err != nil {
			t.Errorf("detach %s: %v", d.Path, err)
		}
	})
	return d, a
}

// Write fills n bytes at off of the attached disk with b, as the guest would.
func Write(t *testing.T, a storage.Attachment, off int64, b byte, n int) {
	t.Helper()
	switch a.Format {
	case storage.FormatQCOW2:
		run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x%02x %d %d", b, off, n), a.Path)
	default:
		f, err := os.OpenFile(a.Path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(bytes.Repeat([]byte{b}, n), off); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

// Read returns n bytes at off of the attached disk (off and n multiples of 4096).
func Read(t *testing.T, a storage.Attachment, off int64, n int) []byte {
	t.Helper()
	switch a.Format {
	case storage.FormatQCOW2:
		out := filepath.Join(t.TempDir(), "read")
		run(t, "qemu-img", "dd", "-f", "qcow2", "-O", "raw", "bs=4096",
			fmt.Sprintf("skip=%d", off/4096), fmt.Sprintf("count=%d", n/4096), "if="+a.Path, "of="+out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	default:
		f, err := os.Open(a.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func wantFill(t *testing.T, what string, got []byte, b byte) {
	t.Helper()
	if !bytes.Equal(got, bytes.Repeat([]byte{b}, len(got))) {
		i := 0
		for i < len(got) && got[i] == b {
			i++
		}
		t.Fatalf("%s: byte %d is 0x%02x, want every byte 0x%02x", what, i, got[i], b)
	}
}

func (s *suite) createWriteKeepsImage(t *testing.T) {
	_, a := s.create(t, ImageBytes)
	wantFill(t, "fresh disk shows the image's data", Read(t, a, dataOff-4096, 4096), 0x5a)
	Write(t, a, dataOff-4096, 0xab, 8192)
	wantFill(t, "disk after write", Read(t, a, dataOff-4096, 8192), 0xab)
	s.checkImage(t)
}

func (s *suite) twoDisksAreIsolated(t *testing.T) {
	_, a := s.create(t, ImageBytes)
	_, b := s.create(t, ImageBytes)
	Write(t, a, dataOff, 0xab, 4096)
	Write(t, b, dataOff, 0xcd, 4096)
	wantFill(t, "first disk", Read(t, a, dataOff, 4096), 0xab)
	wantFill(t, "second disk", Read(t, b, dataOff, 4096), 0xcd)
	s.checkImage(t)
}

func (s *suite) cloneKeepsTheInstant(t *testing.T) {
	ctx := context.Background()
	d, a := s.create(t, ImageBytes)
	Write(t, a, dataOff, 0x11, 4096)
	c := s.disk(t, ImageBytes)
	if err := s.b.Clone(ctx, d, c.Path); err != nil {
		t.Fatalf("clone: %v", err)
	}
	Write(t, a, dataOff, 0x22, 4096)
	ca, err := s.b.Attach(ctx, c)
	if err != nil {
		t.Fatalf("attach clone: %v", err)
	}
	t.Cleanup(func() {
		if err := s.b.Detach(context.Background(), c); err != nil {
			t.Errorf("detach clone %s: %v", c.Path, err)
		}
	})
	wantFill(t, "clone", Read(t, ca, dataOff, 4096), 0x11)
	wantFill(t, "source after the clone", Read(t, a, dataOff, 4096), 0x22)
	Write(t, ca, dataOff, 0x33, 4096)
	wantFill(t, "source after writing the clone", Read(t, a, dataOff, 4096), 0x22)
	s.checkImage(t)
}

// ext4Size reads the filesystem size from the ext4 superblock on the disk.
func ext4Size(t *testing.T, a storage.Attachment) int64 {
	t.Helper()
	sb := Read(t, a, 0, 4096)[1024:]
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xef53 {
		t.Fatal("no ext4 superblock on the disk")
	}
	blocks := uint64(binary.LittleEndian.Uint32(sb[4:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	return int64(blocks) << (10 + binary.LittleEndian.Uint32(sb[24:]))
}

func (s *suite) largerDiskHasLargerFilesystem(t *testing.T) {
	const size = 3 * ImageBytes
	_, a := s.create(t, size)
	if got := ext4Size(t, a); got != size {
		t.Fatalf("the guest's root filesystem is %d bytes, want %d", got, size)
	}
	wantFill(t, "grown disk keeps the image's data", Read(t, a, dataOff-4096, 4096), 0x5a)
	s.checkImage(t)
}

func (s *suite) createRefuses(t *testing.T) {
	ctx := context.Background()
	d, a := s.create(t, ImageBytes)
	Write(t, a, dataOff, 0xab, 4096)
	if err := s.b.Create(ctx, d); err == nil {
		t.Fatal("create over an existing disk succeeded")
	}
	wantFill(t, "disk after a refused create", Read(t, a, dataOff, 4096), 0xab)
	small := s.disk(t, ImageBytes-4096)
	if err := s.b.Create(ctx, small); err == nil {
		t.Fatal("create of a disk smaller than the image succeeded")
	}
	if _, err := os.Stat(small.Path); !os.IsNotExist(err) {
		t.Fatalf("a refused create left %q", small.Path)
	}
}

func (s *suite) removeLeavesNothing(t *testing.T) {
	ctx := context.Background()
	d, a := s.create(t, 2*ImageBytes)
	Write(t, a, dataOff, 0xab, 4096)
	if err := s.b.Detach(ctx, d); err != nil {
		t.Fatalf("detach: %v", err)
	}
	a2, err := s.b.Attach(ctx, d)
	if err != nil {
		t.Fatalf("attach after detach: %v", err)
	}
	wantFill(t, "disk after detach and attach", Read(t, a2, dataOff, 4096), 0xab)
	if err := s.b.Remove(ctx, d); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if err := s.b.Remove(ctx, d); err != nil {
		t.Fatalf("removing a removed disk: %v", err)
	}
	ents, err := os.ReadDir(filepath.Dir(d.Path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("remove left %q in the vm directory", e.Name())
	}
	Leaks(t, s.dir)
}

// Leaks fails t if a loop device's backing file, a mount, or a banger dm
// device refers to anything under dir.
func Leaks(t *testing.T, dir string) {
	t.Helper()
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	if err != nil {
		t.Fatalf("losetup --list: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, dir+"/") {
			t.Errorf("loop device left: %s", l)
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			t.Errorf("mount left: %s", f[4])
		}
	}
	if _, err := os.Stat("/dev/mapper/control"); err == nil {
		out, err := exec.Command("dmsetup", "info", "-c", "--noheadings", "-o", "name").Output()
		if err != nil {
			t.Fatalf("dmsetup info: %v", err)
		}
		for _, n := range strings.Fields(string(out)) {
			if strings.HasPrefix(n, "fc-rootfs-b") || strings.HasPrefix(n, "fc-origin-b") {
				t.Errorf("dm device left: %s", n)
			}
		}
	}
}
