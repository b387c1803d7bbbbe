package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/vmm"
)

var (
	_ vmm.Pauser      = (*Driver)(nil)
	_ vmm.Snapshotter = (*Driver)(nil)
)

// A Firecracker snapshot is two files (snapshot-support.md): the microVM
// state and the guest memory.
const (
	StateFile  = "vmstate.fc"
	MemoryFile = "memory.fc"
)

// jailSnapDir is where a jailed Firecracker writes and reads snapshot
// files, inside its jail.
const jailSnapDir = "/snapshot"

// Bodies of the snapshot requests (firecracker-v1.16.1.yaml).
type (
	vmState struct {
		State string `json:"state"` // "Paused" or "Resumed"
	}
	snapshotCreate struct {
		SnapshotType string `json:"snapshot_type"`
		SnapshotPath string `json:"snapshot_path"`
		MemFilePath  string `json:"mem_file_path"`
	}
	memoryBackend struct {
		BackendType string `json:"backend_type"`
		BackendPath string `json:"backend_path"`
	}
	networkOverride struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
	}
	vsockOverride struct {
		UDSPath string `json:"uds_path"`
	}
	snapshotLoad struct {
		SnapshotPath     string            `json:"snapshot_path"`
		MemBackend       memoryBackend     `json:"mem_backend"`
		ResumeVM         bool              `json:"resume_vm"`
		NetworkOverrides []networkOverride `json:"network_overrides,omitempty"`
		VsockOverride    *vsockOverride    `json:"vsock_override,omitempty"`
	}
	instanceInfo struct {
		State string `json:"state"` // "Not started", "Running", "Paused"
	}
	drivePatch struct {
		DriveID    string `json:"drive_id"`
		PathOnHost string `json:"path_on_host"`
	}
)

// Pause pauses the booted VM (PATCH /vm).
func (d *Driver) Pause(ctx context.Context, spec vmm.Spec) error {
	return newClient(spec.ControlSocket).do(ctx, "PATCH", "/vm", vmState{State: "Paused"}, nil)
}

// Resume resumes a paused VM (PATCH /vm).
func (d *Driver) Resume(ctx context.Context, spec vmm.Spec) error {
	return newClient(spec.ControlSocket).do(ctx, "PATCH", "/vm", vmState{State: "Resumed"}, nil)
}

// snapPaths are where Firecracker writes or reads the snapshot files, as
// it names them, and the same files seen from the host.
func snapPaths(j *jail, dir string) (fcState, fcMem, hostState, hostMem string) {
	if j == nil {
		s, m := filepath.Join(dir, StateFile), filepath.Join(dir, MemoryFile)
		return s, m, s, m
	}
	fcState, fcMem = filepath.Join(jailSnapDir, StateFile), filepath.Join(jailSnapDir, MemoryFile)
	return fcState, fcMem, j.host(fcState), j.host(fcMem)
}

// SaveSnapshot writes a full snapshot of the paused VM (PUT
// /snapshot/create) into dir. Firecracker refuses it unless the VM is
// paused; the driver asks first (GET /) to give a clear error. A jailed
// Firecracker writes inside its jail, as its own user; the files are then
// moved to dir and given to the daemon's user with mode 0600.
func (d *Driver) SaveSnapshot(ctx context.Context, spec vmm.Spec, dir string) (vmm.SnapshotMeta, error) {
	started := time.Now()
	meta, err := vmm.NewSnapshotMeta(vmm.KindFirecracker, "", spec, spec.VsockPath != "")
	if err != nil {
		return meta, fmt.Errorf("firecracker: snapshot: %w", err)
	}
	j, err := d.jail(spec)
	if err != nil {
		return meta, err
	}
	c := newClient(spec.ControlSocket)
	var info instanceInfo
	if err := c.do(ctx, "GET", "/", nil, &info); err != nil {
		return meta, err
	}
	if info.State != "Paused" {
		return meta, errdefs.FailedPrecondition("firecracker: snapshot: vm is %q, not paused (hint: pause it before saving a snapshot)", info.State)
	}
	final := []string{filepath.Join(dir, StateFile), filepath.Join(dir, MemoryFile)}
	for _, p := range final {
		if _, err := os.Lstat(p); err == nil {
			return meta, errdefs.AlreadyExists("firecracker: snapshot: %q already holds a snapshot (hint: save into a new dir)", dir)
		}
	}
	fcState, fcMem, hostState, hostMem := snapPaths(j, dir)
	written := []string{hostState, hostMem}
	ok := false
	defer func() {
		if ok {
			return
		}
		for _, p := range append(written, final...) {
			_ = os.Remove(p) // best effort: the error returned says what failed
		}
		if j != nil {
			_ = os.Remove(j.host(jailSnapDir))
		}
	}()
	if j != nil {
		if err := os.Mkdir(j.host(jailSnapDir), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return meta, fmt.Errorf("firecracker: snapshot: %w", err)
		}
		if err := os.Chown(j.host(jailSnapDir), j.uid, j.gid); err != nil {
			return meta, fmt.Errorf("firecracker: snapshot: %w", err)
		}
	}
	if err := c.do(ctx, "PUT", "/snapshot/create", snapshotCreate{SnapshotType: "Full", SnapshotPath: fcState, MemFilePath: fcMem}, nil); err != nil {
		return meta, err
	}
	var size int64
	for i, p := range written {
		if err := takeFile(p, final[i]); err != nil {
			return meta, fmt.Errorf("firecracker: snapshot: %w", err)
		}
		fi, err := os.Stat(final[i])
		if err != nil {
			return meta, fmt.Errorf("firecracker: snapshot: %w", err)
		}
		size += fi.Size()
	}
	if j != nil {
		_ = os.Remove(j.host(jailSnapDir)) // empty now; Cleanup removes the jail anyway
	}
	meta.Files = []string{StateFile, MemoryFile}
	meta.RootDisk = pathsFor(spec, j).rootfs
	meta.SizeBytes = size
	meta.Created = time.Now().UTC()
	meta.SaveSeconds = time.Since(started).Seconds()
	if err := vmm.WriteSnapshotMeta(dir, meta); err != nil {
		return meta, fmt.Errorf("firecracker: snapshot: %w", err)
	}
	ok = true
	return meta, nil
}

// takeFile moves src to dst (renaming, or copying across filesystems) and
// makes it the daemon's, mode 0600.
func takeFile(src, dst string) error {
	if src != dst {
		if err := os.Rename(src, dst); errors.Is(err, unix.EXDEV) {
			if err := storage.CopyFile(context.Background(), src, dst, 0o600); err != nil {
				return err
			}
			if err := os.Remove(src); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
	}
	if err := os.Chown(dst, os.Getuid(), os.Getgid()); err != nil {
		return err
	}
	return os.Chmod(dst, 0o600)
}

// checkRestore refuses, before anything starts, a snapshot taken with
// another driver, shape, kernel or device set.
func (d *Driver) checkRestore(spec vmm.Spec) (vmm.SnapshotMeta, error) {
	vm, err := vmm.NewSnapshotMeta(vmm.KindFirecracker, "", spec, spec.VsockPath != "")
	if err != nil {
		return vm, errdefs.FailedPrecondition("firecracker: %w", err)
	}
	snap, err := vmm.CheckRestoreDir(spec.Restore.Dir, vm)
	if err != nil {
		return snap, fmt.Errorf("firecracker: restore: %w", err)
	}
	for _, name := range []string{StateFile, MemoryFile} {
		if _, err := os.Stat(filepath.Join(spec.Restore.Dir, name)); err != nil {
			return snap, errdefs.FailedPrecondition("firecracker: restore: %w", err)
		}
	}
	return snap, nil
}

// placeSnapshot lends a jailed Firecracker the snapshot files: read-only
// links or copies in its jail (the memory file backs guest memory for the
// VM's whole life and must not change: Firecracker maps it privately).
func placeSnapshot(spec vmm.Spec, j *jail) error {
	if err := os.Mkdir(j.host(jailSnapDir), 0o700); err != nil {
		return err
	}
	if err := os.Chown(j.host(jailSnapDir), j.uid, j.gid); err != nil {
		return err
	}
	_, _, hostState, hostMem := snapPaths(j, spec.Restore.Dir)
	if err := j.placeReadOnly(filepath.Join(spec.Restore.Dir, StateFile), hostState); err != nil {
		return err
	}
	return j.placeReadOnly(filepath.Join(spec.Restore.Dir, MemoryFile), hostMem)
}

// restoreSteps is what Launch sends instead of configSteps to restore: the
// logger, then PUT /snapshot/load before anything else is configured (the
// API allows nothing but the logger and metrics before it), leaving the VM
// paused; Boot resumes it. The tap comes from the spec (network_overrides),
// and so does the vsock socket (vsock_override; the device resets its
// connections on restore, as snapshot-support.md says, so the guest agent
// reconnects). The root disk is reopened where Firecracker found it when
// the snapshot was taken: in the jail that is always /rootfs, linked to the
// spec's disk; unjailed, the snapshot's path must still be there at load,
// and a different spec.RootDisk is switched to with PATCH /drives after it.
func restoreSteps(spec vmm.Spec, p vmPaths, j *jail, snapRootDisk string) []step {
	fcState, fcMem, _, _ := snapPaths(j, spec.Restore.Dir)
	load := snapshotLoad{
		SnapshotPath: fcState,
		MemBackend:   memoryBackend{BackendType: "File", BackendPath: fcMem},
	}
	if spec.Tap != "" {
		load.NetworkOverrides = []networkOverride{{IfaceID: netIfaceID, HostDevName: spec.Tap}}
	}
	if p.vsock != "" {
		load.VsockOverride = &vsockOverride{UDSPath: p.vsock}
	}
	steps := []step{
		{"PUT", "/logger", logger{Level: "Info", ShowLevel: true}},
		{"PUT", "/snapshot/load", load},
	}
	if j == nil && snapRootDisk != "" && snapRootDisk != p.rootfs {
		steps = append(steps, step{"PATCH", "/drives/" + rootDriveID, drivePatch{DriveID: rootDriveID, PathOnHost: p.rootfs}})
	}
	return steps
}
