package storage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

// QCOW2 makes each VM disk a qcow2 overlay whose backing file is the
// image's raw root (backing format raw). The overlay starts at a few
// hundred KiB whatever the image's size; QEMU opens the backing file
// read-only. Firecracker cannot read qcow2.
//
// The overlay is written by banger itself (qcow2write.go), in the layout
// `qemu-img create -f qcow2 -F raw -b IMAGE OVERLAY SIZE` produces.
//
// A disk larger than its image gets a larger virtual size, and its ext4 is
// grown on the host: qemu-storage-daemon exports a qcow2 as a raw file over
// FUSE (a temporary mount next to it), and e2fsck and resize2fs run against
// that file; only the new groups' metadata lands in the qcow2 (a few MB).
// That takes seconds, so with Options.CacheDir set it is done once per
// (image, size) into a read-only layer kept there, grown-<hash>-<size>.qcow2
// (backed by the image), and each VM's overlay is backed by that layer:
// constant time again from the second VM of a size on. Without CacheDir
// each VM's overlay is grown in place.
type QCOW2 struct{ opts Options }

var _ Backend = (*QCOW2)(nil)

func (*QCOW2) Kind() Kind { return KindQCOW2 }

// qcow2CreateCmd is the qemu-img command that makes the same overlay as
// writeQCOW2Overlay; the tests compare the two.
func qcow2CreateCmd(image, overlay string, size int64) Cmd {
	return Cmd{Name: "qemu-img", Args: []string{"create", "-q", "-f", "qcow2", "-F", "raw", "-b", image, overlay, strconv.FormatInt(size, 10)}}
}

// qemuOptEscape escapes a value for QEMU's key=value,... option syntax.
func qemuOptEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// growViewCmd exports overlay as a raw file at view over FUSE.
func growViewCmd(overlay, view, pidfile string) Cmd {
	return Cmd{Name: "qemu-storage-daemon", Args: []string{
		"--blockdev", "driver=file,node-name=file0,filename=" + qemuOptEscape(overlay),
		"--blockdev", "driver=qcow2,node-name=disk0,file=file0",
		"--export", "type=fuse,id=grow0,node-name=disk0,mountpoint=" + qemuOptEscape(view) + ",writable=on",
		"--pidfile", pidfile,
		"--daemonize",
	}}
}

func growView(overlay string) (view, pidfile string) {
	return overlay + ".grow-view", overlay + ".grow-pid"
}

func (q *QCOW2) Create(ctx context.Context, d Disk) (err error) {
	imgSize, err := imageSize(d)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(d.Image) {
		return fmt.Errorf("image root %q must be an absolute path (the overlay records it as its backing file): %w", d.Image, errdefs.ErrInvalidArgument)
	}
	backing, format := d.Image, FormatRaw
	if d.Size > imgSize && q.opts.CacheDir != "" {
		if backing, err = q.grownBase(ctx, d.Image, d.Size); err != nil {
			return err
		}
		format = FormatQCOW2
	}
	if err := newOverlay(d.Path, backing, format, d.Size); err != nil {
		return err
	}
	if d.Size > imgSize && q.opts.CacheDir == "" {
		if err := q.grow(ctx, d.Path); err != nil {
			return withRemoved(err, d.Path)
		}
	}
	return nil
}

// newOverlay writes a new overlay at path (mode 0600, never over an
// existing file); on error nothing is left.
func newOverlay(path, backing string, format Format, size int64) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create vm disk: %w", err)
	}
	err = f.Chmod(0o600)
	if err == nil {
		err = writeQCOW2Overlay(f, backing, format, size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return withRemoved(fmt.Errorf("write qcow2 overlay %q: %w", path, err), path)
	}
	return nil
}

// grownLayerName is the cached grown layer of image at size, in dir; ext
// is its format (qcow2 or raw).
func grownLayerName(dir, image string, size int64, ext string) string {
	return filepath.Join(dir, fmt.Sprintf("%s%d.%s", grownLayerPrefix(image), size, ext))
}

func grownLayerPrefix(image string) string {
	sum := sha256.Sum256([]byte(image))
	return fmt.Sprintf("grown-%x-", sum[:8])
}

// grownBase returns a read-only qcow2 layer over image whose ext4 fills
// size bytes, made once per (image, size) and kept in CacheDir: every VM
// of that size then gets a constant-time overlay on top of it. It is made
// under a temporary name and renamed, so concurrent creates are safe.
func (q *QCOW2) grownBase(ctx context.Context, image string, size int64) (string, error) {
	name := grownLayerName(q.opts.CacheDir, image, size, "qcow2")
	if h, err := ReadQCOW2Header(name); err == nil && h.BackingFile == image && h.BackingFormat == string(FormatRaw) && h.Size == uint64(size) {
		return name, nil
	}
	if err := os.MkdirAll(q.opts.CacheDir, 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(q.opts.CacheDir, filepath.Base(name)+".tmp-*")
	if err != nil {
		return "", err
	}
	tmpName := tmp.Name()
	tmp.Close()
	if err := os.Remove(tmpName); err != nil { // only its unique name was wanted
		return "", err
	}
	if err := newOverlay(tmpName, image, FormatRaw, size); err != nil {
		return "", err
	}
	err = q.grow(ctx, tmpName)
	if err == nil {
		err = os.Chmod(tmpName, 0o444)
	}
	if err == nil {
		err = os.Rename(tmpName, name)
	}
	if err != nil {
		return "", withRemoved(fmt.Errorf("grow image %q to %d bytes: %w", image, size, err), tmpName)
	}
	q.opts.log().Info("grown image layer cached", "image", image, "size", size, "path", name)
	return name, nil
}

// grow resizes the ext4 inside the overlay to its virtual size through a
// raw FUSE view; the view is always unmounted and its daemon stopped.
func (q *QCOW2) grow(ctx context.Context, overlay string) (err error) {
	view, pidfile := growView(overlay)
	f, err := os.OpenFile(view, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("grow vm disk: %w", err)
	}
	f.Close()
	defer func() {
		if cerr := cleanupGrowView(overlay); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if _, err := q.opts.run(ctx, growViewCmd(overlay, view, pidfile)); err != nil {
		return fmt.Errorf("grow vm disk: %w", err)
	}
	return growExt4(ctx, view)
}

// cleanupGrowView stops the grow step's qemu-storage-daemon, unmounts its
// view and removes both files. It is the one cleanup of the grow step,
// run after it and by Remove and RemoveOrphans after a crash.
func cleanupGrowView(overlay string) error {
	view, pidfile := growView(overlay)
	var errs []error
	if b, err := os.ReadFile(pidfile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			errs = append(errs, stopStorageDaemon(pid))
		}
	}
	if err := unix.Unmount(view, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		if err := unix.Unmount(view, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %q: %w", view, err))
		}
	}
	errs = append(errs, removeFile(view), removeFile(pidfile))
	return errors.Join(errs...)
}

// stopStorageDaemon ends pid if it is a qemu-storage-daemon (a pid file
// left by a crash may name another process by now) and waits for it.
func stopStorageDaemon(pid int) error {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !strings.HasPrefix(string(comm), "qemu-storage-d") {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return nil
	}
	for i := 0; i < 500; i++ { // it flushes the overlay, then exits
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("qemu-storage-daemon %d did not stop within 5s, and SIGKILL failed: %w", pid, err)
	}
	return fmt.Errorf("qemu-storage-daemon %d did not stop within 5s: killed", pid)
}

func (*QCOW2) Attach(_ context.Context, d Disk) (Attachment, error) {
	h, err := ReadQCOW2Header(d.Path)
	if err != nil {
		return Attachment{}, err
	}
	if h.BackingFormat == string(FormatQCOW2) { // over a cached grown layer
		if h, err = ReadQCOW2Header(h.BackingFile); err != nil {
			return Attachment{}, err
		}
	}
	if h.BackingFile != d.Image || h.BackingFormat != string(FormatRaw) {
		return Attachment{}, fmt.Errorf("vm disk %q is backed by %q (%s), not the image %q (raw): %w", d.Path, h.BackingFile, h.BackingFormat, d.Image, errdefs.ErrFailedPrecondition)
	}
	return Attachment{Path: d.Path, Format: FormatQCOW2}, nil
}

func (*QCOW2) Detach(context.Context, Disk) error { return nil }

// Clone copies the overlay (reflink where the filesystem can, else a sparse
// copy): the copy has the same backing file and d's content at this
// instant, and costs what the VM has written.
func (*QCOW2) Clone(ctx context.Context, d Disk, dst string) error {
	return copyFile(ctx, d.Path, dst)
}

func (*QCOW2) Remove(_ context.Context, d Disk) error {
	return errors.Join(cleanupGrowView(d.Path), removeFile(d.Path))
}

// QCOW2Header is what banger reads back from an overlay's header.
type QCOW2Header struct {
	Version       uint32
	Size          uint64 // virtual size in bytes
	BackingFile   string
	BackingFormat string // from the backing-format header extension
}

const (
	qcow2Magic           = 0x514649fb // "QFI\xfb"
	qcow2ExtBackingFmt   = 0xe2792aca
	qcow2ExtEnd          = 0
	qcow2V2HeaderLength  = 72
	qcow2MaxHeaderLength = 1 << 16
)

// ReadQCOW2Header parses the header of a qcow2 file (versions 2 and 3).
func ReadQCOW2Header(path string) (QCOW2Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return QCOW2Header{}, fmt.Errorf("vm disk: %w", err)
	}
	defer f.Close()
	buf := make([]byte, qcow2MaxHeaderLength)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return QCOW2Header{}, fmt.Errorf("read qcow2 header of %q: %w", path, err)
	}
	buf = buf[:n]
	bad := func(what string) (QCOW2Header, error) {
		return QCOW2Header{}, fmt.Errorf("%q is not a valid qcow2 file: %s: %w", path, what, errdefs.ErrInvalidArgument)
	}
	if len(buf) < qcow2V2HeaderLength || binary.BigEndian.Uint32(buf) != qcow2Magic {
		return bad("no qcow2 magic")
	}
	be := binary.BigEndian
	h := QCOW2Header{Version: be.Uint32(buf[4:]), Size: be.Uint64(buf[24:])}
	boff, blen := be.Uint64(buf[8:]), uint64(be.Uint32(buf[16:]))
	if boff != 0 {
		if boff+blen > uint64(len(buf)) {
			return bad("backing file name out of range")
		}
		h.BackingFile = string(buf[boff : boff+blen])
	}
	hlen := uint64(qcow2V2HeaderLength)
	if h.Version >= 3 {
		if len(buf) < 104 {
			return bad("short version 3 header")
		}
		hlen = uint64(be.Uint32(buf[100:]))
	}
	for off := hlen; off+8 <= uint64(len(buf)); {
		typ, l := be.Uint32(buf[off:]), uint64(be.Uint32(buf[off+4:]))
		if typ == qcow2ExtEnd {
			break
		}
		data := off + 8
		if data+l > uint64(len(buf)) {
			return bad("header extension out of range")
		}
		if typ == qcow2ExtBackingFmt {
			h.BackingFormat = string(bytes.TrimRight(buf[data:data+l], "\x00"))
		}
		off = data + (l+7)/8*8
	}
	return h, nil
}
