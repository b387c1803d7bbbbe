package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/model"
)

// TestOpensADatabaseOfThePreviousSchema: a state dir made by the previous
// banger (schema version 1, with a VM in it) opens, keeps its rows, and
// gains the new indexes.
func TestOpensADatabaseOfThePreviousSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	old, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		migrations[0],
		`PRAGMA user_version = 1`,
		`INSERT INTO images (id, name, kernel_path, rootfs_path, rootfs_bytes, created_at) VALUES ('img1', 'default', '/k', '/r', 1, 1)`,
		`INSERT INTO vms (id, name, image_id, vcpus, memory_mib, disk_bytes, vmm, state, guest_ip, vm_dir, log_path, pid, created_at, updated_at)
			VALUES ('vm1', 'web', 'img1', 1, 128, 1, 'qemu', 'running', '172.30.0.2', '/d', '/l', 42, 1, 1)`,
	} {
		if _, err := old.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()

	st, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("open a version-1 database: %v", err)
	}
	defer st.Close()
	v, err := st.GetVM(ctx, "vm1")
	if err != nil || v.Name != "web" || v.State != model.StateRunning || v.Runtime.PID != 42 || v.DiskStrategy != "sparse-copy" || v.DiskReason == "" {
		t.Fatalf("vm after migration: %+v %v", v, err)
	}
	if name, err := st.ImageName(ctx, "img1"); err != nil || name != "default" {
		t.Fatalf("image name %q %v", name, err)
	}
	var version, indexes int
	if err := st.db.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil || version != len(migrations) {
		t.Fatalf("user_version %d %v", version, err)
	}
	if err := st.db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('vms_image', 'vms_state')`).Scan(&indexes); err != nil || indexes != 2 {
		t.Fatalf("%d of the new indexes %v", indexes, err)
	}
	// The plan of vm show's image lookup and of a user lookup use them.
	var plan string
	if err := st.db.QueryRow(`EXPLAIN QUERY PLAN SELECT name FROM vms WHERE image_id = ?`, "img1").Scan(new(int), new(int), new(int), &plan); err != nil {
		t.Fatal(err)
	}
	if want := "USING COVERING INDEX vms_image"; !strings.Contains(plan, "vms_image") {
		t.Fatalf("plan %q, want %s", plan, want)
	}
}

// TestReconcileReadsOnlyVMsClaimingARuntime checks the query startup uses.
func TestReconcileReadsOnlyVMsClaimingARuntime(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.InsertImage(ctx, &model.Image{ID: "img1", Name: "default", KernelPath: "/k", RootfsPath: "/r", RootfsBytes: 1}); err != nil {
		t.Fatal(err)
	}
	vms := []*model.VM{
		{ID: "a", Name: "stopped", State: model.StateStopped},
		{ID: "b", Name: "running", State: model.StateRunning},
		{ID: "c", Name: "creating", State: model.StateCreating},
		{ID: "d", Name: "error-clean", State: model.StateError},
		{ID: "e", Name: "error-kept", State: model.StateError, Runtime: model.Runtime{Tap: "tap-x"}},
		{ID: "f", Name: "starting", State: model.StateStarting},
		{ID: "g", Name: "stopping", State: model.StateStopping},
	}
	for _, v := range vms {
		v.ImageID, v.VMM, v.VCPUs, v.MemoryMiB = "img1", "qemu", 1, 128
		if err := st.Transaction(ctx, func(tx *Tx) error { return tx.InsertVM(ctx, v) }); err != nil {
			t.Fatal(err)
		}
	}
	got, err := st.ListVMsClaimingRuntime(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range got {
		names = append(names, v.Name)
	}
	want := []string{"running", "creating", "error-kept", "starting", "stopping"}
	if len(names) != len(want) {
		t.Fatalf("reconcile reads %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("reconcile reads %v, want %v", names, want)
		}
	}
}
