package model

import "time"

// Snapshot is a saved instant of a VM (issue 12): the VMM's memory and
// device state and a clone of the VM's root disk, in Dir. It is an
// independent copy: it outlives the VM it was taken of.
type Snapshot struct {
	ID        string
	Name      string
	VMID      string // the VM it was taken of (which may since be deleted)
	VMName    string
	ImageID   string // the image the VM was made from: kept while the snapshot is
	VMM       string // driver kind
	VCPUs     int
	MemoryMiB int
	Kernel    string
	Dir       string
	SizeBytes int64
	Meta      []byte // vmm.SnapshotMeta as JSON
	OwnerUID  int    // 0 for now
	CreatedAt time.Time
}
