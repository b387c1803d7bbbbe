// Package model holds what the store persists: VMs, images and operations.
package model

import (
	"fmt"
	"time"
)

// VMState is the recorded lifecycle state of a VM.
type VMState string

const (
	StateCreating VMState = "creating" // record written, disk being made
	StateStopped  VMState = "stopped"
	StateStarting VMState = "starting" // start steps running
	StateRunning  VMState = "running"
	StateStopping VMState = "stopping" // stop or kill in progress
	StateError    VMState = "error"    // last start failed; see LastError
	// Pause and snapshots (issue 12).
	StatePaused VMState = "paused" // VMM running, guest's vCPUs stopped
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

	// Root disk strategy (issue 11): the storage kind of the VM's disk
	// ("qcow2", "reflink", "dm-snapshot", "sparse-copy") and why it was chosen.
	DiskStrategy string
	DiskReason   string
	// Reliability and ownership (issue 9).
	// LastExit is how the VMM last ended on its own (a guest power-off, a
	// crash, a kill from outside banger); nil if it never did.
	LastExit *Exit
	// OwnerUID is the uid of the API client that created the VM.
	OwnerUID int
	// Network isolation: what the guest may reach; changed only while the
	// VM is stopped.
	NetPolicy NetPolicy
}

// Exit is how a VM's VMM process ended without banger asking it to.
type Exit struct {
	// Known: the daemon was the process's parent and saw its status; a
	// VMM re-adopted after a daemon restart ends with no status.
	Known   bool      `json:"known"`
	Code    int       `json:"code"`             // exit code; -1 if killed by a signal
	Signal  string    `json:"signal,omitempty"` // e.g. "KILL"
	At      time.Time `json:"at"`
	LogTail string    `json:"log_tail,omitempty"` // the last lines of the VM log
}

// Clean reports a normal exit with status 0: the guest powered off.
func (e Exit) Clean() bool { return e.Known && e.Signal == "" && e.Code == 0 }

// Reason says how the VMM ended, for messages: "killed by signal KILL at
// 2026-11-29T17:40:01Z".
func (e Exit) Reason() string {
	at := e.At.UTC().Format(time.RFC3339)
	switch {
	case !e.Known:
		return "exited at " + at + " (status unknown: the vmm was re-adopted after a daemon restart)"
	case e.Signal != "":
		return "killed by signal " + e.Signal + " at " + at
	case e.Code == 0:
		return "exited cleanly (the guest powered off) at " + at
	default:
		return fmt.Sprintf("exited with code %d at %s", e.Code, at)
	}
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

	// Guest agent (issue 10): the unix socket QEMU serves the agent's
	// virtio-serial port on (Firecracker's agent is on VsockPath).
	AgentSocket string
	// MemoryFile is the file the guest's RAM is mapped from while it runs
	// (a warm image's template: its snapshot keeps the file); empty:
	// the VMM's own memory.
	MemoryFile string
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

	// Ownership (issue 9): the uid of the API client that made the image.
	OwnerUID int
}

// OpStatus is the outcome of an operation.
type OpStatus string

const (
	OpRunning OpStatus = "running"
	OpDone    OpStatus = "done"
	OpFailed  OpStatus = "failed"
	// OpInterrupted: cut short by a daemon exit, closed at the next start.
	OpInterrupted OpStatus = "interrupted"
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
// (so its log may grow): starting, running, paused or stopping.
func (s VMState) Live() bool {
	return s == StateStarting || s == StateRunning || s == StateStopping || s == StatePaused
}
