package api

import (
	"encoding/json"
	"time"
)

// Snapshot is a saved instant of a VM: its memory and device state and a
// clone of its root disk (issue 12).
type Snapshot struct {
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	VMID      string          `json:"vm_id"`   // the VM it was taken of
	VMName    string          `json:"vm_name"` // its name then
	ImageID   string          `json:"image_id"`
	Image     string          `json:"image"` // image name
	VMM       string          `json:"vmm"`
	VCPUs     int             `json:"vcpus"`
	MemoryMiB int             `json:"memory_mib"`
	Kernel    string          `json:"kernel"`
	Dir       string          `json:"dir"`
	SizeBytes int64           `json:"size_bytes"` // state files and disk clone, as allocated on the host
	Meta      json.RawMessage `json:"meta,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	// Kind is "user" (vm snapshot create, vm fork) or "warm" (an image's
	// warm start, made by image warm; deleted with the image).
	Kind string `json:"kind"`
}

// ForkVMRequest is the body of POST /v1/vms/{ref}/fork: snapshot the VM
// and start a new VM from that instant, with its own identity.
type ForkVMRequest struct {
	Name string `json:"name"` // the new VM's
	// Snapshot names the snapshot taken on the way, which is then kept;
	// empty: a temporary one, deleted once the fork runs.
	Snapshot string `json:"snapshot,omitempty"`
}

// WarmImageRequest is the body of POST /v1/images/{ref}/warm: boot the
// image once in a VM of this shape and keep a snapshot of it, which vm
// create then restores instead of booting. Zero values: the defaults of
// vm create.
type WarmImageRequest struct {
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	VMM       string `json:"vmm,omitempty"`
}

// CreateSnapshotRequest is the body of POST /v1/vms/{ref}/snapshots.
type CreateSnapshotRequest struct {
	// Name of the snapshot; empty: "<vm>-<UTC time>".
	Name string `json:"name,omitempty"`
	// Stop ends the VM once the snapshot is saved instead of resuming it.
	Stop bool `json:"stop,omitempty"`
}

// RestoreRequest is the body of POST /v1/vms/{ref}/restore.
type RestoreRequest struct {
	Snapshot string `json:"snapshot"`
}

// ReidentifyRequest is the body of POST /v1/vms/{ref}/reidentify: give a
// running VM's guest new SSH host keys and machine ID through its agent
// (issue 10), and with NewIP a new address.
type ReidentifyRequest struct {
	NewIP bool `json:"new_ip,omitempty"`
}
