package api

import "time"

// VMSummary is a VM as `vm list` (GET /v1/vms) returns it: the listed
// fields only. `vm show` returns the whole VM. Its JSON field names are
// those of VM, so a list entry decodes into a VM too (the other fields
// left empty).
type VMSummary struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	ImageID   string         `json:"image_id"`
	Image     string         `json:"image"` // image name
	VCPUs     int            `json:"vcpus"`
	MemoryMiB int            `json:"memory_mib"`
	DiskBytes int64          `json:"disk_bytes"`
	VMM       string         `json:"vmm"`
	State     string         `json:"state"`
	GuestIP   string         `json:"guest_ip,omitempty"`
	Runtime   SummaryRuntime `json:"runtime"`
	OwnerUID  int            `json:"owner_uid"`
	CreatedAt time.Time      `json:"created_at"`
}

// SummaryRuntime is the part of Runtime a list shows: the VMM's pid (0: none).
type SummaryRuntime struct {
	PID int `json:"pid,omitempty"`
}
