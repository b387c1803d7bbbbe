package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/internal/model"
)

// TestForkSchemaFromThePreviousVersion: a database of the schema before
// forks (version 7, with a snapshot and a VM) opens; its snapshot is a
// user snapshot that records no disk strategy or IP; origins and warm
// snapshots then work, and an origin goes with its VM.
func TestForkSchemaFromThePreviousVersion(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	old, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	qs := append([]string{}, migrations[:7]...)
	qs = append(qs,
		`PRAGMA user_version = 7`,
		`INSERT INTO images (id, name, kernel_path, rootfs_path, rootfs_bytes, created_at) VALUES ('img1', 'default', '/k', '/r', 1, 1)`,
		`INSERT INTO vms (id, name, image_id, vcpus, memory_mib, disk_bytes, vmm, state, guest_ip, vm_dir, log_path, created_at, updated_at)
			VALUES ('vm1', 'web', 'img1', 1, 128, 1, 'qemu', 'stopped', '172.30.0.2', '/d', '/l', 1, 1)`,
		`INSERT INTO snapshots (id, name, vm_id, vm_name, image_id, vmm, vcpus, memory_mib, kernel, dir, size_bytes, meta, created_at)
			VALUES ('sn1', 's1', 'vm1', 'web', 'img1', 'qemu', 1, 128, '/k', '/s', 1, '{}', 1)`)
	for _, q := range qs {
		if _, err := old.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("open a version-7 database: %v", err)
	}
	defer st.Close()
	sn, err := st.ResolveSnapshot(ctx, "s1")
	if err != nil || sn.Kind != model.SnapshotUser || sn.DiskStrategy != "" || sn.GuestIP != "" {
		t.Fatalf("old snapshot: %+v %v", sn, err)
	}
	if o, err := st.Origin(ctx, "vm1"); o != nil || err != nil {
		t.Fatalf("origin of a vm made from its image: %+v %v", o, err)
	}
	if err := st.InsertOrigin(ctx, &model.Origin{VMID: "vm1", SnapshotID: "sn1", SnapshotName: "s1", Pending: true}); err != nil {
		t.Fatal(err)
	}
	if names, err := st.VMsPendingRestore(ctx, "sn1"); err != nil || len(names) != 1 || names[0] != "web" {
		t.Fatalf("pending: %v %v", names, err)
	}
	if err := st.SetOriginDone(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if names, _ := st.VMsPendingRestore(ctx, "sn1"); len(names) != 0 {
		t.Fatalf("pending after the restore: %v", names)
	}
	if o, _ := st.Origin(ctx, "vm1"); o == nil || o.Pending || o.SnapshotName != "s1" {
		t.Fatalf("origin after the restore: %+v", o)
	}

	// A warm snapshot is found by image, driver and shape only; it does
	// not keep the image (it goes with it), a user snapshot does.
	warm := &model.Snapshot{ID: "sn2", Name: "w", VMID: "x", VMName: "x", ImageID: "img1", VMM: "qemu", VCPUs: 2, MemoryMiB: 512,
		Kernel: "/k", Dir: "/w", Meta: []byte("{}"), Kind: model.SnapshotWarm, DiskStrategy: "qcow2", DiskBytes: 1, GuestIP: "172.30.0.9"}
	if err := st.InsertSnapshot(ctx, warm); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		vmm       string
		cpus, mem int
		found     bool
	}{{"qemu", 2, 512, true}, {"qemu", 1, 512, false}, {"qemu", 2, 256, false}, {"firecracker", 2, 512, false}} {
		got, err := st.WarmSnapshot(ctx, "img1", c.vmm, c.cpus, c.mem)
		if err != nil || (got != nil) != c.found || (got != nil && (got.GuestIP != "172.30.0.9" || got.DiskStrategy != "qcow2")) {
			t.Errorf("warm snapshot for %s %d/%d: %+v %v", c.vmm, c.cpus, c.mem, got, err)
		}
	}
	users, err := view(ctx, st, func(t *Tx) ([]string, error) { return t.SnapshotNamesUsingImage(ctx, "img1") })
	if err != nil || len(users) != 1 || users[0] != "s1" {
		t.Fatalf("snapshots keeping the image: %v %v", users, err)
	}
	// The origin goes with its VM.
	if err := st.DeleteVM(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := st.db.QueryRow(`SELECT count(*) FROM vm_origins`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d origins left after the vm's delete (%v)", n, err)
	}
}
