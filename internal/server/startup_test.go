package server

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

// slowDriver is the fake whose Probe and Cleanup block until the test
// releases them; each says when it has been entered.
type slowDriver struct {
	*vmmtest.Fake
	probing, cleaning chan struct{} // a call arrived
	probeGo, cleanGo  chan struct{} // closed: calls return
}

func (d *slowDriver) Probe(ctx context.Context) vmm.Info {
	select {
	case d.probing <- struct{}{}:
	default:
	}
	<-d.probeGo
	return d.Fake.Probe(ctx)
}

func (d *slowDriver) Cleanup(ctx context.Context, spec vmm.Spec) error {
	select {
	case d.cleaning <- struct{}{}:
	default:
	}
	<-d.cleanGo
	return d.Fake.Cleanup(ctx, spec)
}

// A daemon that has just started answers version and the lists
// while its drivers' probe and its recovery are still under way (both
// blocked here); a VM request made meanwhile waits and sees the VM as
// reconcile left it; the orphan sweep still runs.
func TestServesWhileStartingUp(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, l.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	newService := func(d vmm.Driver) *daemon.Service {
		svc, err := daemon.New(daemon.Config{Layout: l, Drivers: vmm.Registry{"fake": d}, DefaultVMM: "fake",
			GracefulTimeout: 5 * time.Second, KillTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)}, st)
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}

	// The previous daemon's state: a VM recorded running whose VMM is gone,
	// and the dir of a VM whose delete failed half-way.
	before := newService(vmmtest.New())
	kernel, rootfs := testutil.FakeImageFiles(t, dir)
	if _, err := before.ImportImage(ctx, api.ImportImageRequest{Name: "default", Kernel: kernel, Rootfs: rootfs}); err != nil {
		t.Fatal(err)
	}
	web, err := before.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128})
	if err != nil {
		t.Fatal(err)
	}
	web.State, web.Runtime.PID = model.StateRunning, 0 // no process: the VMM exited while no daemon ran
	if err := st.UpdateVM(ctx, web); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(l.VMsDir(), "0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(orphan, 0o700); err != nil {
		t.Fatal(err)
	}

	slow := &slowDriver{Fake: vmmtest.New(), probing: make(chan struct{}, 1), cleaning: make(chan struct{}, 1),
		probeGo: make(chan struct{}), cleanGo: make(chan struct{})}
	released := false
	release := func() {
		if !released {
			released = true
			close(slow.probeGo)
			close(slow.cleanGo)
		}
	}
	t.Cleanup(release)
	svc := newService(slow)
	recovered := svc.Begin(ctx)
	ln, err := Listen(l.ControlSocket(), -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(svc, slog.New(slog.DiscardHandler)), ConnContext: ConnContext}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := client.New(l.ControlSocket())

	<-slow.probing  // the drivers' probe is under way, and blocked
	<-slow.cleaning // so is reconcile's teardown of web
	if v, err := c.Version(ctx); err != nil || v.APIVersion != api.Version {
		t.Fatalf("version while starting: %+v %v", v, err)
	}
	vms, err := c.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].Name != "web" {
		t.Fatalf("list while starting: %+v %v", vms, err)
	}
	shown := make(chan api.VM, 1)
	go func() {
		v, err := c.GetVM(ctx, "web")
		if err != nil {
			t.Errorf("show during start-up: %v", err)
		}
		shown <- v
	}()
	if _, err := c.ListImages(ctx); err != nil {
		t.Fatalf("image list while starting: %v", err)
	}
	select {
	case v := <-shown:
		t.Fatalf("vm show answered before reconcile was done: %s", v.State)
	default:
	}
	release()
	if err := <-recovered; err != nil {
		t.Fatalf("recovery: %v", err)
	}
	if v := <-shown; v.State != "stopped" || v.LastError == "" {
		t.Fatalf("vm show during start-up saw %s (%q), want the reconciled stopped vm with why", v.State, v.LastError)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("the orphan vm dir is still there: %v", err)
	}
	if _, err := os.Stat(web.VMDir); err != nil {
		t.Fatalf("web's own dir: %v", err)
	}
}
