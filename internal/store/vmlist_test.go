package store

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/model"
)

// The list's narrow reads carry the same values as the whole records,
// oldest first, with the image's name (and no IP as empty).
func TestListVMSummariesAndRefs(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	old := newVM("aaaa000000000001", "old", "img1", "")
	old.CreatedAt = time.Unix(100, 0)
	web := newVM("bbbb000000000002", "web", "img1", "172.30.0.2")
	web.CreatedAt = time.Unix(200, 0)
	web.State, web.Runtime.PID, web.OwnerUID, web.VCPUs, web.MemoryMiB = model.StateRunning, 42, 1234, 2, 512
	insertVM(t, s, web)
	insertVM(t, s, old)

	got, err := s.ListVMSummaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []model.VMSummary{
		{ID: old.ID, Name: "old", State: model.StateStopped, VMM: "qemu", VCPUs: 1, MemoryMiB: 256, Image: "base"},
		{ID: web.ID, Name: "web", State: model.StateRunning, VMM: "qemu", VCPUs: 2, MemoryMiB: 512, GuestIP: "172.30.0.2",
			Image: "base", PID: 42, OwnerUID: 1234},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("summaries:\n got %+v\nwant %+v", got, want)
	}
	refs, err := s.ListVMRefs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]model.VMRef{}
	for _, r := range refs {
		byID[r.ID] = r
	}
	if len(refs) != 2 || byID[old.ID] != (model.VMRef{ID: old.ID, Name: "old", VMDir: old.VMDir}) ||
		byID[web.ID] != (model.VMRef{ID: web.ID, Name: "web", GuestIP: "172.30.0.2", VMDir: web.VMDir}) {
		t.Fatalf("refs %+v", refs)
	}
}
