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
	OwnerUID  int    // the uid of the API client that took it
	CreatedAt time.Time

	// Kind is SnapshotUser (taken with vm snapshot create or vm fork) or
	// SnapshotWarm (an image's warm start, made by image warm).
	Kind string
	// What the guest wakes with when forked (issue 12): the root disk's
	// strategy and size, and the IP the source VM had. Empty for
	// snapshots recorded before forks existed.
	DiskStrategy string
	DiskBytes    int64
	GuestIP      string
}

// Snapshot kinds.
const (
	SnapshotUser = "user"
	SnapshotWarm = "warm"
)

// Origin is the snapshot a VM was made from (vm create --from, vm fork,
// or a warm image). While Pending, the VM's next start restores the
// snapshot and gives the guest the VM's own identity; after that it boots
// from its own disk like any VM.
type Origin struct {
	VMID         string
	SnapshotID   string
	SnapshotName string
	Warm         bool
	Pending      bool
	CreatedAt    time.Time
}
