package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
)

func (e *env) assertNothingCreated() {
	e.t.Helper()
	vms, _ := e.st.ListVMs(context.Background())
	if len(vms) != 0 {
		e.t.Fatalf("%d vms recorded", len(vms))
	}
	entries, _ := os.ReadDir(e.layout.VMsDir())
	if len(entries) != 0 {
		e.t.Fatalf("vm dirs left: %v", entries)
	}
}

func TestCreateRejectsBadInput(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name  string
		req   api.CreateVMRequest
		class error
		says  string
	}{
		{"empty name", api.CreateVMRequest{Name: ""}, errdefs.ErrInvalidArgument, "empty"},
		{"too long", api.CreateVMRequest{Name: strings.Repeat("a", 64)}, errdefs.ErrInvalidArgument, "over the limit"},
		{"dotdot", api.CreateVMRequest{Name: "../x"}, errdefs.ErrInvalidArgument, "not valid"},
		{"slash", api.CreateVMRequest{Name: "a/b"}, errdefs.ErrInvalidArgument, "not valid"},
		{"upper", api.CreateVMRequest{Name: "Web"}, errdefs.ErrInvalidArgument, "lowercase"},
		{"hyphen end", api.CreateVMRequest{Name: "web-"}, errdefs.ErrInvalidArgument, "not valid"},
		{"negative vcpus", api.CreateVMRequest{Name: "a", VCPUs: -1}, errdefs.ErrInvalidArgument, "vcpus -1"},
		{"absurd vcpus", api.CreateVMRequest{Name: "a", VCPUs: 4096}, errdefs.ErrInvalidArgument, "vcpus 4096"},
		{"negative memory", api.CreateVMRequest{Name: "a", MemoryMiB: -5}, errdefs.ErrInvalidArgument, "memory -5"},
		{"tiny memory", api.CreateVMRequest{Name: "a", MemoryMiB: 8}, errdefs.ErrInvalidArgument, "memory 8"},
		{"absurd memory", api.CreateVMRequest{Name: "a", MemoryMiB: 1 << 30}, errdefs.ErrInvalidArgument, "memory"},
		{"disk too small", api.CreateVMRequest{Name: "a", DiskBytes: 1024}, errdefs.ErrInvalidArgument, "smaller"},
		{"unknown image", api.CreateVMRequest{Name: "a", Image: "nope"}, errdefs.ErrNotFound, `"nope"`},
		{"unknown vmm", api.CreateVMRequest{Name: "a", VMM: "bochs"}, errdefs.ErrInvalidArgument, `"bochs"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.svc.CreateVM(context.Background(), c.req)
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("err = %v; want class %v mentioning %q", err, c.class, c.says)
			}
			e.assertNothingCreated()
		})
	}
	if system.MemTotalMiB() == 0 {
		t.Fatal("cannot read host memory: the absurd-memory bound is not enforced")
	}
}

func TestCreateDuplicateNameChangesNothing(t *testing.T) {
	e := newEnv(t)
	first := e.create("web")
	_, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web"})
	if !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), `"web"`) {
		t.Fatalf("err = %v", err)
	}
	vms, _ := e.st.ListVMs(context.Background())
	entries, _ := os.ReadDir(e.layout.VMsDir())
	if len(vms) != 1 || len(entries) != 1 || vms[0].ID != first.ID {
		t.Fatalf("duplicate create left %d records and %d dirs", len(vms), len(entries))
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	e := newEnv(t)
	im, _ := e.st.ResolveImage(context.Background(), DefaultImage)
	os.Remove(im.RootfsPath) // the disk copy will fail
	if _, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web"}); err == nil {
		t.Fatal("create succeeded without an image rootfs")
	}
	e.assertNothingCreated()
}

func TestUnknownVMIsNotFound(t *testing.T) {
	e := newEnv(t)
	for name, call := range map[string]func() error{
		"start":   func() error { _, err := e.svc.StartVM(context.Background(), "ghost"); return err },
		"stop":    func() error { _, err := e.svc.StopVM(context.Background(), "ghost", StopOptions{}); return err },
		"kill":    func() error { _, err := e.svc.KillVM(context.Background(), "ghost", ""); return err },
		"restart": func() error { _, err := e.svc.RestartVM(context.Background(), "ghost", StopOptions{}); return err },
		"delete":  func() error { return e.svc.DeleteVM(context.Background(), "ghost") },
		"ops":     func() error { _, err := e.svc.Operations(context.Background(), "ghost", 0); return err },
	} {
		if err := call(); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `"ghost"`) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestVMAddressedByNameIDAndPrefix(t *testing.T) {
	e := newEnv(t)
	v := e.create("web")
	for _, ref := range []string{"web", v.ID, v.ID[:6]} {
		got, err := e.svc.GetVM(context.Background(), ref)
		if err != nil || got.ID != v.ID {
			t.Errorf("ref %q: %v %v", ref, got, err)
		}
	}
}

func TestImportRejectsBadFiles(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	kernel, rootfs := testutil.FakeImageFiles(t, dir)
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("hello, not a kernel, definitely not ext4"), 0o644)
	before, _ := os.ReadDir(e.layout.ImagesDir())
	cases := []struct {
		name string
		req  api.ImportImageRequest
		says string
	}{
		{"bad name", api.ImportImageRequest{Name: "../x", Kernel: kernel, Rootfs: rootfs}, "not valid"},
		{"duplicate", api.ImportImageRequest{Name: DefaultImage, Kernel: kernel, Rootfs: rootfs}, "already exists"},
		{"relative", api.ImportImageRequest{Name: "img", Kernel: "vmlinuz", Rootfs: rootfs}, "not absolute"},
		{"missing kernel", api.ImportImageRequest{Name: "img", Kernel: dir + "/nope", Rootfs: rootfs}, "no such file"},
		{"kernel is junk", api.ImportImageRequest{Name: "img", Kernel: junk, Rootfs: rootfs}, "neither an x86 bzImage nor an ELF"},
		{"rootfs is junk", api.ImportImageRequest{Name: "img", Kernel: kernel, Rootfs: junk}, "not an ext4 image"},
		{"initrd is junk", api.ImportImageRequest{Name: "img", Kernel: kernel, Rootfs: rootfs, Initrd: junk}, "not a cpio archive"},
		{"kernel is a dir", api.ImportImageRequest{Name: "img", Kernel: dir, Rootfs: rootfs}, "not a regular file"},
	}
	for _, c := range cases {
		_, err := e.svc.ImportImage(context.Background(), c.req)
		if err == nil || !strings.Contains(err.Error(), c.says) || errdefs.ClassOf(err) == errdefs.ClassInternal {
			t.Errorf("%s: err = %v, want a classed error saying %q", c.name, err, c.says)
		}
	}
	after, _ := os.ReadDir(e.layout.ImagesDir())
	ims, _ := e.svc.ListImages(context.Background())
	if len(after) != len(before) || len(ims) != 1 {
		t.Fatalf("failed imports left files (%d -> %d) or records (%d)", len(before), len(after), len(ims))
	}
}

func TestDeleteImageInUseIsRefused(t *testing.T) {
	e := newEnv(t)
	e.create("web")
	e.create("db")
	err := e.svc.DeleteImage(context.Background(), DefaultImage)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), `"web"`) || !strings.Contains(err.Error(), `"db"`) {
		t.Fatalf("err = %v", err)
	}
	im, users, err := e.svc.GetImage(context.Background(), DefaultImage)
	if err != nil || len(users) != 2 || !exists(im.RootfsPath) {
		t.Fatalf("refused delete changed the image: %v %v", users, err)
	}
	e.svc.DeleteVM(context.Background(), "web")
	e.svc.DeleteVM(context.Background(), "db")
	if err := e.svc.DeleteImage(context.Background(), DefaultImage); err != nil {
		t.Fatal(err)
	}
	if exists(e.layout.Image(im.ID).Path()) {
		t.Fatal("image files left")
	}
}

func TestReconcile(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	live := e.started("live")
	dead := e.started("dead")
	reused := e.started("reused")

	// dead: its vmm exits while no daemon runs.
	deadProc := e.fake.Process(dead.ID)
	if err := system.Signal(deadProc.PID, deadProc.StartTime, 9); err != nil {
		t.Fatal(err)
	}
	for alive(deadProc) {
	}
	// This daemon's watcher records the exit; put the record back as a
	// daemon that was not running would have left it.
	for e.get("dead").State == model.StateRunning {
		time.Sleep(10 * time.Millisecond)
	}
	if err := e.st.UpdateVM(ctx, dead); err != nil {
		t.Fatal(err)
	}
	// reused: the recorded pid now belongs to another process (start time differs).
	r := e.get("reused")
	r.Runtime.PIDStartTime++
	if err := e.st.UpdateVM(ctx, r); err != nil {
		t.Fatal(err)
	}
	// creating: a create cut short.
	half := &model.VM{ID: system.NewID(), Name: "half", ImageID: live.ImageID, VCPUs: 1, MemoryMiB: 128, VMM: "fake", State: model.StateCreating}
	half.VMDir = e.layout.VM(half.ID).Path()
	half.LogPath = e.layout.VM(half.ID).LogPath()
	os.MkdirAll(half.VMDir, 0o700)
	if err := e.st.Transaction(ctx, func(tx *store.Tx) error { return tx.InsertVM(ctx, half) }); err != nil {
		t.Fatal(err)
	}

	if err := e.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v := e.get("live"); v.State != model.StateRunning || v.Runtime.PID != live.Runtime.PID {
		t.Fatalf("live vm not re-adopted: %+v", v)
	}
	for _, name := range []string{"dead", "reused"} {
		v := e.get(name)
		if v.State != model.StateStopped || !strings.Contains(v.LastError, "exited while the daemon was not running") || v.Runtime.PID != 0 {
			t.Fatalf("%s: %s %q", name, v.State, v.LastError)
		}
		if exists(e.layout.VMMSocket(v.Short())) {
			t.Fatalf("%s: stale socket kept", name)
		}
	}
	if _, err := e.st.ResolveVM(ctx, "half"); !errors.Is(err, errdefs.ErrNotFound) || exists(half.VMDir) {
		t.Fatal("half-created vm kept")
	}
	// The re-adopted vm is stoppable; the "reused" process was never signalled.
	if _, err := e.svc.StopVM(ctx, "live", StopOptions{}); err != nil {
		t.Fatal(err)
	}
	if p := e.fake.Process(reused.ID); !alive(p) {
		t.Fatal("reconcile signalled a process whose start time did not match")
	} else {
		system.Signal(p.PID, p.StartTime, 9)
		system.WaitExit(ctx, p.PID, p.StartTime, 10*time.Second) // before the leak check
	}
}

// TestStartupRemovesWhatAHalfDeleteLeft: a vm dir and host-key pins whose
// vm record is gone are removed when the daemon starts; a live vm's stay.
func TestStartupRemovesWhatAHalfDeleteLeft(t *testing.T) {
	e := newEnv(t)
	live := e.create("live")
	orphan := e.layout.VM("0123456789abcdef0123456789abcdef").Path()
	os.MkdirAll(orphan, 0o700)
	kh := e.layout.KnownHosts()
	pins := live.GuestIP + ",live ssh-ed25519 AAAAlive\n172.30.0.99,gone ssh-ed25519 AAAAgone\n"
	os.WriteFile(kh, []byte(pins), 0o600)
	if err := e.svc.Startup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if exists(orphan) || !exists(live.VMDir) {
		t.Fatalf("orphan dir kept %v, live dir kept %v", exists(orphan), exists(live.VMDir))
	}
	if b, _ := os.ReadFile(kh); string(b) != live.GuestIP+",live ssh-ed25519 AAAAlive\n" {
		t.Fatalf("known_hosts after startup:\n%s", b)
	}
}
