package store

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func seedImage(t *testing.T, s *Store, id, name string) *model.Image {
	t.Helper()
	im := &model.Image{ID: id, Name: name, KernelPath: "/k", RootfsPath: "/r", RootfsBytes: 1 << 20, Manifest: []byte(`{"release":"bookworm"}`)}
	if err := s.InsertImage(context.Background(), im); err != nil {
		t.Fatal(err)
	}
	return im
}

func newVM(id, name, imageID, ip string) *model.VM {
	return &model.VM{ID: id, Name: name, ImageID: imageID, VCPUs: 1, MemoryMiB: 256, DiskBytes: 1 << 20,
		VMM: "qemu", State: model.StateStopped, GuestIP: ip, VMDir: "/d/" + id, LogPath: "/d/" + id + "/vm.log"}
}

func insertVM(t *testing.T, s *Store, v *model.VM) {
	t.Helper()
	if err := s.Transaction(context.Background(), func(tx *Tx) error { return tx.InsertVM(context.Background(), v) }); err != nil {
		t.Fatal(err)
	}
}

func TestVMRoundTripAndPersistence(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	seedImage(t, s, "img1", "base")
	v := newVM("abcdef0123456789", "web", "img1", "172.30.0.2")
	insertVM(t, s, v)

	v.State = model.StateRunning
	v.Runtime = model.Runtime{PID: 42, PIDStartTime: 7, ControlSocket: "/run/fc-abcdef01.sock", VsockCID: 3,
		VsockPath: "/run/fc-abcdef01.vsock", Tap: "tap-fc-abcdef01", DMName: "fc-rootfs-abcdef01", Accel: "tcg",
		StartedAt: time.Unix(100, 5).UTC()}
	v.LastError = "x"
	v.Ports = []model.PortMapping{{HostPort: 8080, GuestPort: 80, Proto: "tcp"}}
	v.HostKey = "ssh-ed25519 AAAAC3Nz"
	if err := s.UpdateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, err := Open(ctx, path) // reopen: migrations are idempotent, data persisted
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.GetVM(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Runtime != v.Runtime || got.State != model.StateRunning || got.GuestIP != "172.30.0.2" || got.LastError != "x" || len(got.Ports) != 1 || got.Ports[0] != v.Ports[0] || got.HostKey != v.HostKey {
		t.Fatalf("round trip mismatch:\n got %+v\nwant %+v", got, v)
	}
	if got.CreatedAt.IsZero() || got.UpdatedAt.Before(got.CreatedAt) {
		t.Fatalf("timestamps not kept: %v %v", got.CreatedAt, got.UpdatedAt)
	}
}

func TestResolveVM(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	insertVM(t, s, newVM("aaaa1111bbbb", "one", "img1", ""))
	insertVM(t, s, newVM("aaaa2222cccc", "two", "img1", ""))
	insertVM(t, s, newVM("ffff0000dddd", "aaaa2222cccc0", "img1", "")) // a name that looks like an id prefix

	for ref, want := range map[string]string{
		"aaaa1111bbbb": "one", "one": "one", "aaaa1": "one", "aaaa2": "two", "ffff": "aaaa2222cccc0",
		"aaaa2222cccc0": "aaaa2222cccc0", // exact name wins over nothing
	} {
		v, err := s.ResolveVM(ctx, ref)
		if err != nil || v.Name != want {
			t.Errorf("ResolveVM(%q) = %v, %v; want %s", ref, v, err, want)
		}
	}
	if _, err := s.ResolveVM(ctx, "aaaa"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("ambiguous prefix: got %v, want invalid argument", err)
	}
	if _, err := s.ResolveVM(ctx, "aaa"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("prefix shorter than %d must not resolve: %v", MinPrefix, err)
	}
	if _, err := s.ResolveVM(ctx, "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown: got %v", err)
	}
	if _, err := s.ResolveVM(ctx, ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("empty: got %v", err)
	}
}

func TestUniqueNamesAndIPs(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	insertVM(t, s, newVM("id1", "web", "img1", "172.30.0.2"))

	err := s.Transaction(ctx, func(tx *Tx) error { return tx.InsertVM(ctx, newVM("id2", "web", "img1", "172.30.0.3")) })
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate name: got %v", err)
	}
	err = s.Transaction(ctx, func(tx *Tx) error { return tx.InsertVM(ctx, newVM("id3", "db", "img1", "172.30.0.2")) })
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate ip: got %v", err)
	}
	if err := s.InsertImage(ctx, &model.Image{ID: "img2", Name: "base", KernelPath: "k", RootfsPath: "r"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate image name: got %v", err)
	}
	vms, _ := s.ListVMs(ctx)
	if len(vms) != 1 {
		t.Fatalf("failed inserts changed the store: %d vms", len(vms))
	}
}

func TestDeleteImageRefusedWhileUsed(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	insertVM(t, s, newVM("id1", "web", "img1", ""))
	insertVM(t, s, newVM("id2", "db", "img1", ""))
	err := s.Transaction(ctx, func(tx *Tx) error { return tx.DeleteImage(ctx, "img1") })
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("got %v", err)
	}
	for _, n := range []string{`"web"`, `"db"`} {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("error %q does not name vm %s", err, n)
		}
	}
	for _, id := range []string{"id1", "id2"} {
		if err := s.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Transaction(ctx, func(tx *Tx) error { return tx.DeleteImage(ctx, "img1") }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResolveImage(ctx, "base"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("deleted image still resolves: %v", err)
	}
}

func TestOperationsJournalAndCascade(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	insertVM(t, s, newVM("id1", "web", "img1", ""))
	for i, kind := range []string{"vm.create", "vm.start"} {
		op := &model.Operation{VMID: "id1", Kind: kind, Status: model.OpRunning, StartedAt: time.Unix(int64(i+1), 0)}
		if err := s.InsertOperation(ctx, op); err != nil {
			t.Fatal(err)
		}
		op.Stages = append(op.Stages, model.Stage{Name: "vmm.launch", Status: "done", At: time.Unix(5, 0).UTC()})
		op.Status, op.Error, op.EndedAt = model.OpFailed, "boom", time.Unix(9, 0)
		if err := s.UpdateOperation(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	ops, err := s.ListOperations(ctx, "id1", 0)
	if err != nil || len(ops) != 2 {
		t.Fatalf("ops = %v, %v", ops, err)
	}
	if ops[0].Kind != "vm.start" || ops[0].Status != model.OpFailed || ops[0].Error != "boom" || len(ops[0].Stages) != 1 || ops[0].Stages[0].Name != "vmm.launch" {
		t.Fatalf("newest op wrong: %+v", ops[0])
	}
	if last, _ := s.ListOperations(ctx, "id1", 1); len(last) != 1 || last[0].ID != ops[0].ID {
		t.Fatalf("limit 1 = %+v", last)
	}
	if err := s.DeleteVM(ctx, "id1"); err != nil {
		t.Fatal(err)
	}
	if ops, _ := s.ListOperations(ctx, "id1", 0); len(ops) != 0 {
		t.Fatalf("operations outlived their vm: %d", len(ops))
	}
}

func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := string(rune('a'+i%26)) + string(rune('a'+i/26)) + "00"
			errs <- s.Transaction(ctx, func(tx *Tx) error { return tx.InsertVM(ctx, newVM(id, "vm-"+id, "img1", "")) })
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent insert failed (busy timeout / immediate tx not working?): %v", err)
		}
	}
	vms, _ := s.ListVMs(ctx)
	if len(vms) != 40 {
		t.Fatalf("got %d vms, want 40", len(vms))
	}
}

// TestReadsDoNotWaitForWriters: a read runs while a write transaction holds
// SQLite's write lock (reads never take it).
func TestReadsDoNotWaitForWriters(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	seedImage(t, s, "img1", "base")
	insertVM(t, s, newVM("id1", "web", "img1", ""))
	inTx, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		done <- s.Transaction(ctx, func(tx *Tx) error {
			close(inTx)
			<-release
			return nil
		})
	}()
	<-inTx
	readCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := s.ResolveVM(readCtx, "web")
	close(release)
	if err != nil || v.ID != "id1" {
		t.Fatalf("read during a write transaction: %v %v", v, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
