// Package vmm defines what banger needs from a virtual machine monitor.
// Drivers (vmm/qemu, vmm/firecracker) implement Driver; the daemon never
// branches on a driver's kind, it reads what a driver offers from Info.
package vmm

import (
	"context"
	"time"
)

// Kinds of driver.
const (
	KindQEMU        = "qemu"
	KindFirecracker = "firecracker"
)

// Spec is everything a driver needs to run one VM. The daemon derives every
// path and name before the first step runs, so all steps see the same values.
type Spec struct {
	ID         string
	Name       string
	VCPUs      int
	MemoryMiB  int
	Kernel     string
	Initrd     string // optional
	KernelArgs string
	RootDisk   string

	ControlSocket string // QMP socket or Firecracker API socket
	VsockPath     string
	VsockCID      uint32
	Tap           string // empty: no network device
	MAC           string
	LogPath       string // console and VMM output
	VMDir         string

	// Restore, if set, makes Launch restore the VM from a snapshot
	// instead of preparing a boot, and Boot resume it (see Snapshotter).
	Restore *RestoreSpec `json:",omitempty"`
	// GenerationID is the VM generation ID (a GUID) the guest sees, on
	// drivers that have the device: a fork gets a new one so the guest
	// knows it was copied. Empty: the driver picks a fresh one per launch.
	GenerationID string `json:",omitempty"`

	// OnSpawn, if set, is called by Launch as soon as the VMM process
	// exists, before anything waits on it: the daemon records the pid there,
	// so a daemon crash during a slow launch never leaves an unrecorded
	// VMM. An error makes Launch end the process and fail.
	OnSpawn func(Process) error `json:"-"`

	// RootDiskFormat is how RootDisk is read: "raw" (empty means raw) or
	// "qcow2", on drivers whose Features.QCOW2 says so.
	RootDiskFormat string `json:",omitempty"`
	// ConfigDisk, if set, is the VM's config disk (its identity, for the
	// image's initramfs): a raw file attached read-only after the root.
	ConfigDisk string `json:",omitempty"`
	// Reliability (issue 9).
	// LogCap bounds LogPath and its rotated half (LogPath.1) together, in
	// bytes; 0: no cap (tests that run without the banger binary).
	LogCap int64 `json:",omitempty"`
	// OnExit, if set, hears the VMM's exit status when it ends while this
	// daemon (its parent) runs.
	OnExit func(Exit) `json:"-"`
	// Guest agent (issue 10): AgentSocket is where a driver without vsock
	// (QEMU) serves the guest agent's virtio-serial port; empty: none.
	AgentSocket string `json:",omitempty"`
	// MemoryFile, if set on a boot, is a file that holds the guest's RAM
	// while it runs, mapped shared: every write the guest makes lands in
	// it. A snapshot saved with SaveSnapshotMovingMemory then keeps that
	// file as its memory instead of copying the RAM (see
	// MemoryFileSnapshotter). Only on drivers that implement it; the
	// driver creates the file (mode 0600) and Cleanup removes it.
	MemoryFile string `json:",omitempty"`
}

// Process identifies a running VMM process across daemon restarts.
type Process struct {
	PID       int
	StartTime uint64
}

// Features are optional abilities and needs, as data.
type Features struct {
	Vsock bool `json:"vsock"`
	// KernelELF: the driver boots only an uncompressed ELF vmlinux.
	KernelELF bool `json:"kernel_elf"`
	// QCOW2: the driver opens a qcow2 root disk (Spec.RootDiskFormat).
	QCOW2 bool `json:"qcow2"`
}

// Info describes a driver on this host.
type Info struct {
	Kind      string   `json:"kind"`
	Available bool     `json:"available"`
	Reason    string   `json:"reason"` // why it is (not) available, and with what acceleration
	Binary    string   `json:"binary,omitempty"`
	Version   string   `json:"version,omitempty"`
	Accel     string   `json:"accel,omitempty"` // "kvm" or "tcg"
	Features  Features `json:"features"`
}

// Driver runs VMs of one kind. Every method takes the same Spec the daemon
// derived for the VM; Launch, Boot and Shutdown act on the VM's VMM process
// through Spec.ControlSocket.
type Driver interface {
	Kind() string
	// Probe reports whether this host can run the driver.
	Probe(ctx context.Context) Info
	// Validate rejects a spec this driver cannot run, before anything starts.
	Validate(spec Spec) error
	// Launch starts the VMM process with the VM configured but not yet
	// running, and returns once its control socket answers.
	Launch(ctx context.Context, spec Spec) (Process, error)
	// Boot starts the guest.
	Boot(ctx context.Context, spec Spec) error
	// Shutdown asks the guest to shut down (Ctrl-Alt-Del) and returns
	// without waiting for the process to exit.
	Shutdown(ctx context.Context, spec Spec) error
	// Cleanup removes what the driver created for the VM (sockets, jail).
	// It is idempotent and runs after the process is gone.
	Cleanup(ctx context.Context, spec Spec) error
}

// UserMapper is implemented by drivers whose VMM process runs as a user
// other than root (a jailed Firecracker): the daemon hands the VM's tap to
// that user. Drivers without it run their VMM as root.
type UserMapper interface {
	RunAs(spec Spec) (uid, gid int)
}

// Registry is the explicit set of drivers the daemon was built with.
type Registry map[string]Driver

// SocketTimeout bounds how long Launch waits for a control socket.
const SocketTimeout = 10 * time.Second
