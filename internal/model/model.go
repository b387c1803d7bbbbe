// Package model holds what the store persists: VMs, images and operations.
package model

import "time"

// VMState is the recorded lifecycle state of a VM.
type VMState string

const (
	StateCreating VMState = "creating" // record written, disk being made
	StateStopped  VMState = "stopped"
	StateStarting VMState = "starting" // start steps running
	StateRunning  VMState = "running"
	StateStopping VMState = "stopping" // stop or kill in progress
	StateError    VMState = "error"    // last start failed; see LastError
)

// VM is one virtual machine as the store records it.
type VM struct {
	ID        string
	Name      string
	ImageID   string
	VCPUs     int
	MemoryMiB int
	DiskBytes int64
	VMM       string // driver kind: "qemu", "firecracker"
	VMMReason string // why this driver was chosen
	State     VMState
	GuestIP   string // allocated at create, stable for the VM's life
	VMDir     string
	LogPath   string
	LastError string
	// Ports are published while the VM runs.
	Ports []PortMapping
	// HostKey is the SSH host public key banger gave the VM and pinned
	// (authorized_keys format); empty means trust on first use.
	HostKey   string
	Runtime   Runtime
	CreatedAt time.Time
	UpdatedAt time.Time

	// Network isolation: what the guest may reach; changed only while the
	// VM is stopped.
	NetPolicy NetPolicy
}

// PortMapping publishes a guest port on the host.
type PortMapping struct {
	HostPort  uint16 `json:"host_port"`
	GuestPort uint16 `json:"guest_port"`
	Proto     string `json:"proto"`
}

// Runtime is what exists only while a VM runs (or what a crash left behind).
// It is recorded before the host is changed, so a cleanup always knows what
// to remove.
type Runtime struct {
	PID           int
	PIDStartTime  uint64 // clock ticks since boot, from /proc/PID/stat; tells a reused pid apart
	ControlSocket string
	VsockPath     string
	VsockCID      uint32
	Tap           string
	DMName        string
	Accel         string // "kvm" or "tcg" for QEMU
	StartedAt     time.Time
}

// Short is the short form of the ID that per-VM host names derive from.
func (v *VM) Short() string { return ShortID(v.ID) }

// ShortIDLen keeps "tap-fc-<short>" within the 15-byte interface name limit.
const ShortIDLen = 8

func ShortID(id string) string {
	if len(id) <= ShortIDLen {
		return id
	}
	return id[:ShortIDLen]
}

// Image is a bootable guest: kernel, optional initramfs and an ext4 root.
type Image struct {
	ID         string
	Name       string
	KernelPath string // what QEMU boots: a bzImage or an ELF vmlinux
	// VmlinuxPath is an uncompressed ELF vmlinux (what Firecracker boots on
	// x86_64); empty if the image has none.
	VmlinuxPath string
	InitrdPath  string
	RootfsPath  string
	RootfsBytes int64
	Cmdline     string // extra kernel command line the image needs
	Manifest    []byte // JSON, as produced by the image builder; empty for imports
	CreatedAt   time.Time
}

// OpStatus is the outcome of an operation.
type OpStatus string

const (
	OpRunning OpStatus = "running"
	OpDone    OpStatus = "done"
	OpFailed  OpStatus = "failed"
)

// Operation is one lifecycle call on a VM, as journalled.
type Operation struct {
	ID        int64
	VMID      string
	Kind      string // "vm.start", "vm.stop", ...
	Status    OpStatus
	Error     string
	Stages    []Stage
	StartedAt time.Time
	EndedAt   time.Time
}

// Stage is one named step of an operation.
type Stage struct {
	Name   string    `json:"name"`
	Status string    `json:"status"` // "done", "failed", "undone", "note"
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at"`
}

// Live reports whether a VM in this state may have a VMM process running
// (so its log may grow): starting, running or stopping.
func (s VMState) Live() bool {
	return s == StateStarting || s == StateRunning || s == StateStopping
}
