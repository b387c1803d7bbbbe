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
