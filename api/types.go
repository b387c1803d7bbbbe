// Package api holds the wire types of banger's HTTP+JSON API, shared by the
// daemon and its clients. It imports nothing of banger's internals.
package api

import "time"

// Version is the API path prefix.
const Version = "v1"

// VM is a virtual machine as the API shows it.
type VM struct {
	ID        string        `json:"id"`
	Name      string        `json:"name"`
	ImageID   string        `json:"image_id"`
	Image     string        `json:"image"` // image name
	VCPUs     int           `json:"vcpus"`
	MemoryMiB int           `json:"memory_mib"`
	DiskBytes int64         `json:"disk_bytes"`
	VMM       string        `json:"vmm"`
	VMMReason string        `json:"vmm_reason,omitempty"` // why this driver was chosen (not in lists)
	State     string        `json:"state"`
	GuestIP   string        `json:"guest_ip,omitempty"`
	MAC       string        `json:"mac,omitempty"`
	VMDir     string        `json:"vm_dir"`
	LogPath   string        `json:"log_path"`
	LastError string        `json:"last_error,omitempty"`
	Ports     []PortMapping `json:"ports,omitempty"`
	HostKey   string        `json:"host_key,omitempty"` // pinned SSH host key; empty: trust on first use
	Runtime   Runtime       `json:"runtime"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`

	// LastOperation is the newest journalled operation (vm show only).
	LastOperation *Operation `json:"last_operation,omitempty"`
	// Unsupported lists driver features this VM does not have, with why.
	Unsupported map[string]string `json:"unsupported,omitempty"`

	// Root disk strategy (issue 11): qcow2, reflink, dm-snapshot or
	// sparse-copy, and why it was chosen (the reason on show only).
	DiskStrategy string `json:"disk_strategy,omitempty"`
	DiskReason   string `json:"disk_reason,omitempty"`
	// Reliability and ownership (issue 9).
	// LastExit is how the VMM last ended on its own; nil if it never did.
	LastExit *Exit `json:"last_exit,omitempty"`
	// OwnerUID is the uid of the client that created the VM.
	OwnerUID int `json:"owner_uid"`
	// Agent says how banger reaches the guest: its banger-agent, or ssh
	// when the image has none (vm show only; issue 10).
	Agent string `json:"agent,omitempty"`
	// Network isolation: what the guest may reach.
	Network NetworkPolicy `json:"network"`
	// Origin is the snapshot the VM was made from (a fork or a warm
	// start); nil for a VM made from its image (vm show only; issue 12).
	Origin *Origin `json:"origin,omitempty"`
}

// Origin is the snapshot a VM was made from.
type Origin struct {
	Snapshot   string `json:"snapshot"` // its name when the VM was made
	SnapshotID string `json:"snapshot_id"`
	// Warm: the snapshot is its image's warm start (image warm), taken
	// when vm create found one for the VM's shape.
	Warm bool `json:"warm,omitempty"`
	// Pending: the VM has not started yet; its first start restores the
	// snapshot (then gives the guest the VM's identity) instead of booting.
	Pending bool `json:"pending"`
}

// Exit is how a VM's VMM process ended without banger asking it to.
type Exit struct {
	Known   bool      `json:"known"` // false: re-adopted after a daemon restart, no status
	Code    int       `json:"code"`  // -1 if killed by a signal
	Signal  string    `json:"signal,omitempty"`
	At      time.Time `json:"at"`
	Reason  string    `json:"reason"`             // e.g. "killed by signal KILL at ..."
	LogTail string    `json:"log_tail,omitempty"` // the last lines of the VM log
}

// Runtime is what exists while a VM runs.
type Runtime struct {
	PID           int       `json:"pid,omitempty"`
	ControlSocket string    `json:"control_socket,omitempty"`
	VsockPath     string    `json:"vsock_path,omitempty"`
	VsockCID      uint32    `json:"vsock_cid,omitempty"`
	Tap           string    `json:"tap,omitempty"`
	Accel         string    `json:"accel,omitempty"`
	StartedAt     time.Time `json:"started_at,omitzero"`
}

// CreateVMRequest is the body of POST /v1/vms.
type CreateVMRequest struct {
	Name      string `json:"name"`
	Image     string `json:"image,omitempty"` // name or id; empty: the default image
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	DiskBytes int64  `json:"disk_bytes,omitempty"` // 0: the image's size
	VMM       string `json:"vmm,omitempty"`        // empty: the daemon's default
	Start     bool   `json:"start,omitempty"`
	// Publish maps host ports to guest ports while the VM runs:
	// "HOSTPORT:GUESTPORT[/tcp|/udp]".
	Publish []string `json:"publish,omitempty"`
	// DiskStrategy is the root disk strategy: auto (empty: the daemon's
	// default), qcow2, reflink, dm-snapshot or sparse-copy.
	DiskStrategy string `json:"disk_strategy,omitempty"`

	// Network isolation: what the guest may reach; zero: the default
	// (egress internet, isolated from other guests).
	Network NetworkPolicy `json:"network,omitzero"`

	// From makes the VM a fork of a snapshot (name or id): its first start
	// restores it with the VM's own identity instead of booting. Its shape,
	// driver, image and disk are the snapshot's (issue 12).
	From string `json:"from,omitempty"`
	// Cold boots the image even when it has a warm snapshot of this shape.
	Cold bool `json:"cold,omitempty"`
}

// NetworkPolicy is what a VM's guest may reach (the body of
// PUT /v1/vms/{ref}/network, which replaces it on a stopped VM).
type NetworkPolicy struct {
	// Egress is "internet" (public destinations only; the default when
	// empty) or "none".
	Egress string `json:"egress,omitempty"`
	// Allow and Deny rules, CIDR[:PORT[-PORT][/tcp|/udp]]; Deny wins.
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
	// Networks are named networks: VMs that share one reach each other.
	Networks []string `json:"networks,omitempty"`
}

// SSHTarget is how a client on the daemon's host reaches a VM over SSH
// (GET /v1/vms/{ref}/ssh). The key and known_hosts files are root's.
type SSHTarget struct {
	Name       string `json:"name"`
	Address    string `json:"address"` // ip:port
	User       string `json:"user"`
	KeyPath    string `json:"key_path"`
	KnownHosts string `json:"known_hosts"`
	// TOFU: banger could not give the VM its own host key, so the first key
	// the guest presents is pinned.
	TOFU bool `json:"tofu"`
}

// PortMapping is a published port.
type PortMapping struct {
	HostPort  uint16 `json:"host_port"`
	GuestPort uint16 `json:"guest_port"`
	Proto     string `json:"proto"`
}

// StopRequest is the body of POST /v1/vms/{ref}/stop and .../restart.
type StopRequest struct {
	// TimeoutSeconds bounds the graceful shutdown; 0 means the daemon's default.
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
	// Force: when the graceful request cannot be sent, kill the VMM. Without
	// it such a stop fails and the VM keeps running.
	Force bool `json:"force,omitempty"`
}

// KillRequest is the body of POST /v1/vms/{ref}/kill.
type KillRequest struct {
	Signal string `json:"signal,omitempty"` // default TERM
}

// Operation is one journalled lifecycle call.
type Operation struct {
	ID         int64     `json:"id"`
	Kind       string    `json:"kind"`
	Status     string    `json:"status"`
	Error      string    `json:"error,omitempty"`
	Stages     []Stage   `json:"stages"`
	StartedAt  time.Time `json:"started_at"`
	EndedAt    time.Time `json:"ended_at,omitzero"`
	DurationMS int64     `json:"duration_ms"`
}

// Stage is one named step of an operation.
type Stage struct {
	Name   string    `json:"name"`
	Status string    `json:"status"`
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at"`
}

// Image is a bootable guest image.
type Image struct {
	ID          string         `json:"id"`
	Name        string         `json:"name"`
	KernelPath  string         `json:"kernel_path"`
	InitrdPath  string         `json:"initrd_path,omitempty"`
	RootfsPath  string         `json:"rootfs_path"`
	RootfsBytes int64          `json:"rootfs_bytes"`
	Cmdline     string         `json:"cmdline,omitempty"`
	Manifest    *ImageManifest `json:"manifest,omitempty"`
	CreatedAt   time.Time      `json:"created_at"`
	UsedBy      []string       `json:"used_by,omitempty"`
}

// ImportImageRequest is the body of POST /v1/images/import. Paths are
// absolute paths on the daemon's host.
type ImportImageRequest struct {
	Name    string `json:"name"`
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd,omitempty"`
	Rootfs  string `json:"rootfs"`
	Cmdline string `json:"cmdline,omitempty"`
}

// Driver describes one VMM driver on the daemon's host.
type Driver struct {
	Kind      string          `json:"kind"`
	Available bool            `json:"available"`
	Reason    string          `json:"reason"`
	Binary    string          `json:"binary,omitempty"`
	Version   string          `json:"version,omitempty"`
	Accel     string          `json:"accel,omitempty"`
	Features  map[string]bool `json:"features"`
}

// Info is GET /v1/info.
type Info struct {
	Version    string   `json:"version"`
	StateDir   string   `json:"state_dir"`
	RuntimeDir string   `json:"runtime_dir"`
	DefaultVMM string   `json:"default_vmm"`
	Drivers    []Driver `json:"drivers"`
}

// Error is the body of every non-2xx response.
type Error struct {
	Class   string `json:"class"`
	Message string `json:"message"`
}

// ErrorResponse wraps Error.
type ErrorResponse struct {
	Error Error `json:"error"`
}

// BuildImageRequest is the body of POST /v1/images/build.
type BuildImageRequest struct {
	Name      string   `json:"name,omitempty"`    // default "default"
	Release   string   `json:"release,omitempty"` // Debian codename, default bookworm
	Packages  []string `json:"packages,omitempty"`
	SizeBytes int64    `json:"size_bytes,omitempty"` // root filesystem size; default 2 GiB
}

// BuildEvent is one line of the newline-delimited JSON stream that
// POST /v1/images/build answers with. The last line carries Image or Error.
type BuildEvent struct {
	Stage  string    `json:"stage,omitempty"`
	Status string    `json:"status,omitempty"` // start, progress, done
	Detail string    `json:"detail,omitempty"`
	Done   int64     `json:"done,omitempty"`
	Total  int64     `json:"total,omitempty"`
	At     time.Time `json:"at"`
	Image  *Image    `json:"image,omitempty"`
	Error  *Error    `json:"error,omitempty"`
}
