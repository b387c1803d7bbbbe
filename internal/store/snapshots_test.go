package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
)

// TestSnapshotRecords: a snapshot round-trips and persists, resolves by id,
// name and unique id prefix, keeps its name unique, outlives its VM, and
// keeps its image from being deleted, naming itself.
func TestSnapshotRecords(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	seedImage(t, s, "img1", "base")
	insertVM(t, s, newVM("abcdef0123456789", "web", "img1", "172.30.0.2"))
	sn := &model.Snapshot{ID: "5a5a000011112222", Name: "s1", VMID: "abcdef0123456789", VMName: "web", ImageID: "img1",
		VMM: "qemu", VCPUs: 1, MemoryMiB: 256, Kernel: "/k", Dir: "/state/snapshots/5a5a000011112222", SizeBytes: 91 << 20,
		Meta: []byte(`{"driver":"qemu"}`), CreatedAt: time.Unix(200, 0).UTC()}
	if err := s.InsertSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	dup := *sn
	dup.ID = "6b6b"
	if err := s.InsertSnapshot(ctx, &dup); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	s.Close()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, ref := range []string{"s1", sn.ID, "5a5a"} {
		got, err := s.ResolveSnapshot(ctx, ref)
		if err != nil || got.Name != "s1" || got.SizeBytes != sn.SizeBytes || string(got.Meta) != string(sn.Meta) || !got.CreatedAt.Equal(sn.CreatedAt) {
			t.Fatalf("resolve %q: %+v %v", ref, got, err)
		}
	}
	if _, err := s.ResolveSnapshot(ctx, "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if err := s.DeleteVM(ctx, "abcdef0123456789"); err != nil {
		t.Fatal(err)
	}
	if list, err := s.ListSnapshots(ctx); err != nil || len(list) != 1 {
		t.Fatalf("the snapshot did not outlive its vm: %v %v", list, err)
	}
	err = s.Transaction(ctx, func(tx *Tx) error { return tx.DeleteImage(ctx, "img1") })
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), `snapshot "s1"`) {
		t.Fatalf("image delete with a snapshot: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := s.Transaction(ctx, func(tx *Tx) error { return tx.DeleteImage(ctx, "img1") }); err != nil {
		t.Fatalf("image delete once the snapshot is gone: %v", err)
	}
}
