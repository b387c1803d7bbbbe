package daemon

import (
	"context"
	"errors"
	"testing"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

// blockingCleanup is the fake whose Cleanup waits for the test.
type blockingCleanup struct {
	*vmmtest.Fake
	entered chan struct{}
	release chan struct{}
}

func (d *blockingCleanup) Cleanup(ctx context.Context, spec vmm.Spec) error {
	select {
	case d.entered <- struct{}{}:
	default:
	}
	<-d.release
	return d.Fake.Cleanup(ctx, spec)
}

// Begin returns at once and recovers in the background: WaitStarted holds
// its callers until the recovery is done (a caller that gives up gets an
// unavailable error) and the VM is reconciled when they go on. A service
// nothing began does not hold anyone.
func TestBeginRecoversInTheBackground(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.svc.WaitStarted(ctx); err != nil {
		t.Fatalf("a service nothing began holds its callers: %v", err)
	}
	web := e.create("web")
	web.State = model.StateRunning // its VMM exited while no daemon ran (pid 0: none)
	if err := e.st.UpdateVM(ctx, web); err != nil {
		t.Fatal(err)
	}
	drv := &blockingCleanup{Fake: e.fake, entered: make(chan struct{}, 1), release: make(chan struct{})}
	released := false
	t.Cleanup(func() {
		if !released {
			close(drv.release)
		}
	})
	cfg := e.svc.cfg
	cfg.Drivers = vmm.Registry{"fake": drv}
	svc, err := New(cfg, e.st)
	if err != nil {
		t.Fatal(err)
	}
	recovered := svc.Begin(ctx)
	<-drv.entered // reconcile is tearing web down, and blocked
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if err := svc.WaitStarted(gone); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("a caller that gives up during recovery: %v, want unavailable", err)
	}
	if v, _ := e.st.GetVM(ctx, web.ID); v.State != model.StateRunning {
		t.Fatalf("web is %s before its teardown ended", v.State)
	}
	close(drv.release)
	released = true
	if err := svc.WaitStarted(ctx); err != nil {
		t.Fatalf("after the recovery: %v", err)
	}
	if v, _ := e.st.GetVM(ctx, web.ID); v.State != model.StateStopped {
		t.Fatalf("WaitStarted returned with web %s, not yet reconciled", v.State)
	}
	if err := <-recovered; err != nil {
		t.Fatalf("recovery: %v", err)
	}
}
