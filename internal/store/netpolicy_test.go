package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/banger-vm/banger/internal/model"
)

// TestNetPolicyRoundTrip: a VM's network policy is stored at insert,
// replaced by an update, and read back as written.
func TestNetPolicyRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	v := newVM("abcdef0123456789", "web", "img1", "172.30.0.2")
	v.NetPolicy = model.NetPolicy{Egress: "none", Allow: []string{"10.0.0.0/8:443/tcp"}, Networks: []string{"team"}}
	insertVM(t, s, v)
	got, err := s.GetVM(ctx, v.ID)
	if err != nil || !reflect.DeepEqual(got.NetPolicy, v.NetPolicy) {
		t.Fatalf("after insert: %+v %v, want %+v", got.NetPolicy, err, v.NetPolicy)
	}
	v.NetPolicy = model.NetPolicy{Deny: []string{"1.2.3.4"}}
	if err := s.UpdateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetVM(ctx, v.ID)
	if err != nil || !reflect.DeepEqual(got.NetPolicy, v.NetPolicy) {
		t.Fatalf("after update: %+v %v, want %+v", got.NetPolicy, err, v.NetPolicy)
	}
}

// TestVMsOfAnOlderSchemaGetTheDefaultPolicy: a VM recorded before network
// policies existed reads back with the zero policy (the default: egress
// internet, isolated).
func TestVMsOfAnOlderSchemaGetTheDefaultPolicy(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	old, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		migrations[0], migrations[1],
		`PRAGMA user_version = 2`,
		`INSERT INTO images (id, name, kernel_path, rootfs_path, rootfs_bytes, created_at) VALUES ('img1', 'default', '/k', '/r', 1, 1)`,
		`INSERT INTO vms (id, name, image_id, vcpus, memory_mib, disk_bytes, vmm, state, guest_ip, vm_dir, log_path, created_at, updated_at)
			VALUES ('vm1', 'web', 'img1', 1, 128, 1, 'qemu', 'stopped', '172.30.0.2', '/d', '/l', 1, 1)`,
	} {
		if _, err := old.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	st, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	v, err := st.GetVM(ctx, "vm1")
	if err != nil || !reflect.DeepEqual(v.NetPolicy, model.NetPolicy{}) {
		t.Fatalf("vm of the older schema: %+v %v", v, err)
	}
}
