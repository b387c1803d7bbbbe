package api

// VMSummary is a VM as `vm list` (GET /v1/vms) returns it: the fields the
// list shows, no more (`vm show` returns the whole VM). Its JSON names are
// those of VM's fields, so a list entry decodes into a VM too (the other
// fields left empty).
type VMSummary struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	State     string         `json:"state"`
	VMM       string         `json:"vmm"`
	VCPUs     int            `json:"vcpus"`
	MemoryMiB int            `json:"memory_mib"`
	GuestIP   string         `json:"guest_ip,omitempty"`
	Image     string         `json:"image"` // image name
	Runtime   SummaryRuntime `json:"runtime"`
	OwnerUID  int            `json:"owner_uid"`
}

// SummaryRuntime is the part of Runtime a list shows: the VMM's pid (0: none).
type SummaryRuntime struct {
	PID int `json:"pid,omitempty"`
}
