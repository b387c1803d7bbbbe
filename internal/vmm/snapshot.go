package vmm

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
)

// Pauser is implemented by drivers that can freeze a running guest in
// place and let it go on later. A paused guest runs no instruction; its
// memory stays in the VMM process.
type Pauser interface {
	// Pause stops the guest's vCPUs. Pausing a paused VM is not an error.
	Pause(ctx context.Context, spec Spec) error
	// Resume lets a paused VM (or one whose snapshot was just saved) run
	// again. Resuming a running VM is not an error.
	Resume(ctx context.Context, spec Spec) error
}

// Snapshotter is implemented by drivers that can save a paused VM's memory
// and device state to files, and launch a VMM that restores from them
// (Spec.Restore) instead of booting.
type Snapshotter interface {
	// SaveSnapshot writes the memory and device state of the paused VM
	// into dir (which must exist; the driver creates its files there with
	// mode 0600 and refuses to overwrite any) and writes SnapshotMetaFile
	// last, so a dir with a meta file holds a complete snapshot. The VM
	// stays paused: Resume lets it go on, or the caller stops it. The
	// root disk is not saved: the caller clones it while the VM is paused.
	// A VM that is not paused gives a FailedPrecondition error; on any
	// error the files written so far are removed.
	SaveSnapshot(ctx context.Context, spec Spec, dir string) (SnapshotMeta, error)
}

// MemoryFileSnapshotter is a Snapshotter whose VMs can boot with their RAM
// in a shared file (Spec.MemoryFile). Such a VM is snapshotted in the
// time its device state takes to write, whatever its memory size: the
// memory is already in a file, which becomes the snapshot's. A restore
// maps that file copy-on-write, so it loads no RAM either, and every VM
// restored from one snapshot shares its unchanged pages.
type MemoryFileSnapshotter interface {
	Snapshotter
	// SaveSnapshotMovingMemory is SaveSnapshot for a paused VM booted
	// with spec.MemoryFile: the device state goes into dir, and the
	// memory file is flushed and moved there (SnapshotMeta.MemoryFile).
	// The VM must not run again (the snapshot's memory would change
	// under it): the caller ends it.
	SaveSnapshotMovingMemory(ctx context.Context, spec Spec, dir string) (SnapshotMeta, error)
}

// RestoreSpec asks Launch to restore the VM from a snapshot instead of
// preparing a boot: Launch loads the state and returns with the VM paused
// at the instant of the snapshot, and Boot resumes it. The spec's root
// disk must hold what the VM's disk held at that instant (a clone taken
// while it was paused).
type RestoreSpec struct {
	Dir string // a dir written by SaveSnapshot
}

// SnapshotMetaFile is the name of the meta file in a snapshot dir.
const SnapshotMetaFile = "snapshot.json"

// SnapshotMeta records what a snapshot was taken with: a snapshot restores
// only into a VM of the same driver, machine shape, kernel and device set.
type SnapshotMeta struct {
	Driver       string   `json:"driver"`
	Machine      string   `json:"machine,omitempty"` // QEMU -machine type
	VCPUs        int      `json:"vcpus"`
	MemoryMiB    int      `json:"memory_mib"`
	Kernel       string   `json:"kernel"`
	KernelSHA256 string   `json:"kernel_sha256"`
	InitrdSHA256 string   `json:"initrd_sha256,omitempty"`
	Network      bool     `json:"network"` // a network device was attached
	Vsock        bool     `json:"vsock"`   // a vsock device was attached
	Files        []string `json:"files"`   // state files in the dir, besides the meta
	// RootDisk is where the VMM had the root disk, for drivers whose
	// snapshot names it (Firecracker reopens the disk there on load).
	RootDisk string `json:"root_disk,omitempty"`
	// MemoryFile, in Files, is the guest's RAM as a file of its own
	// (MemoryFileSnapshotter): a restore maps it copy-on-write. Empty:
	// the RAM is in the state file.
	MemoryFile  string    `json:"memory_file,omitempty"`
	SizeBytes   int64     `json:"size_bytes"`
	Created     time.Time `json:"created"`
	SaveSeconds float64   `json:"save_seconds"`
}

// NewSnapshotMeta fills the shape fields of a meta from spec, hashing the
// kernel and initrd.
func NewSnapshotMeta(driver, machine string, spec Spec, vsock bool) (SnapshotMeta, error) {
	m := SnapshotMeta{
		Driver: driver, Machine: machine, VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB,
		Kernel: spec.Kernel, Network: spec.Tap != "", Vsock: vsock,
	}
	var err error
	if m.KernelSHA256, err = fileSHA256(spec.Kernel); err != nil {
		return m, err
	}
	if spec.Initrd != "" {
		if m.InitrdSHA256, err = fileSHA256(spec.Initrd); err != nil {
			return m, err
		}
	}
	return m, nil
}

// fileSHA256 is the sha256 of the file at path. Kernels and initrds are
// hashed at every save and restore, on a restore's critical path, and an
// image's files do not change (they are read-only): a hash is remembered
// for the file's identity (device, inode, size, change time) and read again
// only when that changes.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %q: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("hash %q: %w", path, err)
	}
	key, cacheable := hashKeyOf(path, fi)
	if cacheable {
		if sum, ok := hashCache.Load(key); ok {
			return sum.(string), nil
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %q: %w", path, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if cacheable {
		hashCache.Store(key, sum)
	}
	return sum, nil
}

// hashCache maps a hashKey to a file's sha256.
var hashCache sync.Map

type hashKey struct {
	path       string
	dev, ino   uint64
	size       int64
	ctimeNanos int64
}

func hashKeyOf(path string, fi os.FileInfo) (hashKey, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return hashKey{}, false
	}
	return hashKey{path: path, dev: uint64(st.Dev), ino: st.Ino, size: fi.Size(), ctimeNanos: st.Ctim.Nano()}, true //nolint:unconvert // Dev's type differs by platform
}

// CheckRestore refuses to restore snapshot meta into a VM whose meta (as
// NewSnapshotMeta computes it for the VM's spec) differs in anything the
// restored guest depends on, with a FailedPrecondition error naming both
// shapes and what differs.
func CheckRestore(snap, vm SnapshotMeta) error {
	var diffs []string
	snapDesc, vmDesc := snap.shape(), vm.shape()
	differ := func(what string, a, b string) {
		if a != b {
			diffs = append(diffs, what)
			snapDesc += ", " + what + " " + a
			vmDesc += ", " + what + " " + b
		}
	}
	if snap.Driver != vm.Driver || snap.Machine != vm.Machine || snap.VCPUs != vm.VCPUs || snap.MemoryMiB != vm.MemoryMiB {
		diffs = append(diffs, "machine shape")
	}
	differ("kernel", filepath.Base(snap.Kernel)+" sha256 "+short(snap.KernelSHA256), filepath.Base(vm.Kernel)+" sha256 "+short(vm.KernelSHA256))
	differ("initrd sha256", cmp.Or(short(snap.InitrdSHA256), "none"), cmp.Or(short(vm.InitrdSHA256), "none"))
	differ("network device", yesNo(snap.Network), yesNo(vm.Network))
	differ("vsock device", yesNo(snap.Vsock), yesNo(vm.Vsock))
	if len(diffs) == 0 {
		return nil
	}
	return errdefs.FailedPrecondition("snapshot was taken with %s; this vm has %s "+
		"(hint: a snapshot restores only into a vm of the same driver, shape, kernel and devices: create the vm with the snapshot's, or boot it instead)",
		snapDesc, vmDesc)
}

// shape is "2 vcpus/1024 MiB on qemu (q35)".
func (m SnapshotMeta) shape() string {
	s := fmt.Sprintf("%s/%d MiB on %s", plural(m.VCPUs, "vcpu"), m.MemoryMiB, m.Driver)
	if m.Machine != "" {
		s += " (" + m.Machine + ")"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func plural(n int, what string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, what)
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

// WriteSnapshotMeta writes meta as dir's meta file (mode 0600), through a
// temporary file and a rename so the meta appears complete or not at all.
func WriteSnapshotMeta(dir string, meta SnapshotMeta) error {
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+SnapshotMetaFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write snapshot meta: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, SnapshotMetaFile))
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort: the error returned says what failed
		return fmt.Errorf("write snapshot meta: %w", err)
	}
	return nil
}

// ReadSnapshotMeta reads the meta of the snapshot in dir. A dir without
// one is NotFound (no snapshot, or an incomplete one).
func ReadSnapshotMeta(dir string) (SnapshotMeta, error) {
	var m SnapshotMeta
	b, err := os.ReadFile(filepath.Join(dir, SnapshotMetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return m, errdefs.NotFound("no complete snapshot in %q (hint: its %s is missing)", dir, SnapshotMetaFile)
	}
	if err != nil {
		return m, fmt.Errorf("read snapshot meta: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, errdefs.FailedPrecondition("snapshot meta %q is corrupt: %v", filepath.Join(dir, SnapshotMetaFile), err)
	}
	return m, nil
}

// CheckRestoreDir reads the snapshot meta in dir and checks it against vm
// (see CheckRestore).
func CheckRestoreDir(dir string, vm SnapshotMeta) (SnapshotMeta, error) {
	snap, err := ReadSnapshotMeta(dir)
	if err != nil {
		return snap, err
	}
	return snap, CheckRestore(snap, vm)
}
