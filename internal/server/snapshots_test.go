package server

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// TestSnapshotRoutes: pause, resume, snapshot create/list/show/delete and
// restore over the wire, with their error classes.
func TestSnapshotRoutes(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.importImage(t)
	if _, err := h.c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Start: true}); err != nil {
		t.Fatal(err)
	}
	if v, err := h.c.PauseVM(ctx, "web"); err != nil || v.State != "paused" {
		t.Fatalf("pause: %v %s", err, v.State)
	}
	if v, err := h.c.ResumeVM(ctx, "web"); err != nil || v.State != "running" {
		t.Fatalf("resume: %v %s", err, v.State)
	}
	if _, err := h.c.PauseVM(ctx, "ghost"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("pause of a missing vm: %v", err)
	}
	sn, err := h.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Name: "s1"})
	if err != nil || sn.Name != "s1" || sn.VMName != "web" || sn.Image != "default" || len(sn.Meta) == 0 {
		t.Fatalf("create: %+v %v", sn, err)
	}
	if list, err := h.c.ListSnapshots(ctx); err != nil || len(list) != 1 || list[0].Meta != nil {
		t.Fatalf("list: %+v %v", list, err)
	}
	if got, err := h.c.GetSnapshot(ctx, "s1"); err != nil || got.ID != sn.ID {
		t.Fatalf("show: %v", err)
	}
	if _, err := h.c.CreateSnapshot(ctx, "web", api.CreateSnapshotRequest{Name: "s1"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if v, err := h.c.RestoreVM(ctx, "web", "s1"); err != nil || v.State != "running" {
		t.Fatalf("restore: %v", err)
	}
	if _, err := h.c.RestoreVM(ctx, "web", ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("restore without a snapshot: %v", err)
	}
	if code, _ := rawRequest(t, h.socket, "POST", "/"+api.Version+"/vms/web/restore", `{"snap":"s1"}`); code != 400 {
		t.Fatalf("unknown field: %d", code)
	}
	if err := h.c.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sn.Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir after delete: %v", err)
	}
	if err := h.c.DeleteSnapshot(ctx, "s1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}
