package model

// VMSummary is a VM as `vm list` shows it: the listed fields only, read by
// one narrow query (no runtime detail, host key, paths or policy).
type VMSummary struct {
	ID        string
	Name      string
	State     VMState
	VMM       string
	VCPUs     int
	MemoryMiB int
	GuestIP   string
	Image     string // image name; empty if the image is gone
	PID       int
	OwnerUID  int
}

// VMRef is what tells a VM's leftovers from an orphan's: its id, name,
// guest IP and directory.
type VMRef struct {
	ID      string
	Name    string
	GuestIP string
	VMDir   string
}
