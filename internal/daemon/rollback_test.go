package daemon

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/vmm"
)

// TestStartFailureAtEachRealStep fails the real start list at each step
// that can fail and checks that exactly the steps before it are undone,
// in reverse, and that nothing is left on the (fake) host.
func TestStartFailureAtEachRealStep(t *testing.T) {
	boom := errors.New("injected")
	cases := []struct {
		step   string
		inject func(e *env, fn *fakeNet)
		undone []string
	}{
		{"network.tap", func(e *env, fn *fakeNet) { fn.failCreateTap = boom }, []string{"disk.attach:undone"}},
		{"network.policy", func(e *env, fn *fakeNet) { fn.failApplVM = boom }, []string{"network.tap:undone", "disk.attach:undone"}},
		{"cleanup_stale_runtime", func(e *env, fn *fakeNet) { e.fake.FailCleanup = boom }, []string{"network.policy:undone", "network.tap:undone", "disk.attach:undone"}},
		{"vmm.launch", func(e *env, fn *fakeNet) { e.fake.OnLaunch = func(context.Context, vmm.Spec) error { return boom } },
			[]string{"cleanup_stale_runtime:undone", "network.policy:undone", "network.tap:undone", "disk.attach:undone"}},
		{"vmm.boot", func(e *env, fn *fakeNet) { e.fake.OnBoot = func(context.Context, vmm.Spec) error { return boom } },
			[]string{"vmm.launch:undone", "cleanup_stale_runtime:undone", "network.policy:undone", "network.tap:undone", "disk.attach:undone"}},
		{"cap.publish", func(e *env, fn *fakeNet) { fn.failPublish = boom },
			[]string{"vmm.launch:undone", "cleanup_stale_runtime:undone", "network.policy:undone", "network.tap:undone", "disk.attach:undone"}},
	}
	for _, c := range cases {
		t.Run(c.step, func(t *testing.T) {
			e, fn := newNetEnv(t)
			if _, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}}); err != nil {
				t.Fatal(err)
			}
			c.inject(e, fn)
			_, err := e.svc.StartVM(context.Background(), "web")
			var se *StepError
			if !errors.As(err, &se) || se.Step != c.step || !errors.Is(err, boom) {
				t.Fatalf("err = %v, want step %s to fail", err, c.step)
			}
			_, stages := e.lastOp("web")
			i := slices.Index(stages, c.step+":failed")
			if i < 0 || !slices.Equal(stages[i+1:], c.undone) {
				t.Fatalf("stages %v: after the failure want exactly %v", stages, c.undone)
			}
			v := e.get("web")
			if v.State != model.StateError || v.Runtime != (model.Runtime{}) {
				t.Fatalf("recorded %s %+v", v.State, v.Runtime)
			}
			if taps, pubs := fn.state(); taps != 0 || pubs != 0 || fn.vmRules() != 0 {
				t.Fatalf("left %d taps, %d published, %d vms' rules", taps, pubs, fn.vmRules())
			}
			for _, p := range e.fake.Processes() {
				if alive(p) {
					t.Fatalf("vmm pid %d left running", p.PID)
				}
			}
			e.fake.FailCleanup = nil
		})
	}
}

// TestFailedUndoKeepsTheRuntime: when the rollback cannot kill the VMM, the
// VM keeps its runtime (its pid) instead of orphaning a live process, and
// the next start ends that process before launching a new one.
func TestFailedUndoKeepsTheRuntime(t *testing.T) {
	e := newEnv(t)
	e.create("web")
	real := e.svc.signal
	e.svc.signal = func(pid int, st uint64, sig syscall.Signal) error {
		return errors.New("operation not permitted")
	}
	e.fake.OnBoot = func(context.Context, vmm.Spec) error { return errors.New("boot failed") }
	if _, err := e.svc.StartVM(context.Background(), "web"); err == nil || !strings.Contains(err.Error(), "operation not permitted") {
		t.Fatalf("err = %v", err)
	}
	v := e.get("web")
	first := e.fake.Process(v.ID)
	if v.State != model.StateError || v.Runtime.PID != first.PID || !alive(first) {
		t.Fatalf("the live vmm's handle was dropped: %s %+v alive=%v", v.State, v.Runtime, alive(first))
	}
	e.svc.signal = real
	e.fake.OnBoot = nil
	v, err := e.svc.StartVM(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if alive(first) || v.Runtime.PID == first.PID || !alive(e.fake.Process(v.ID)) {
		t.Fatalf("the leftover vmm %d was not ended before the new start", first.PID)
	}
	_, stages := e.lastOp("web")
	if stages[0] != "vmm.leftover:note" {
		t.Fatalf("stages %v", stages)
	}
}

// TestPIDRecordedBeforeTheDriverWaits: the pid is in the store the moment
// the VMM exists, so a daemon crash during a slow launch cannot orphan it.
func TestPIDRecordedBeforeTheDriverWaits(t *testing.T) {
	e := newEnv(t)
	v := e.create("web")
	var seen int
	e.fake.OnSpawned = func(vmm.Spec) {
		got, _ := e.st.GetVM(context.Background(), v.ID)
		seen = got.Runtime.PID
	}
	v, err := e.svc.StartVM(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if seen == 0 || seen != v.Runtime.PID {
		t.Fatalf("while the driver waited the store had pid %d (final %d)", seen, v.Runtime.PID)
	}
}

// TestReconcileCutShortOperations: a start the daemon did not finish is
// rolled back; a stop it did not finish leaves a running vm running; a
// failed start's leftovers are cleaned.
func TestReconcileCutShortOperations(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	starting := e.started("starting")
	stopping := e.started("stopping")
	for name, state := range map[string]model.VMState{"starting": model.StateStarting, "stopping": model.StateStopping} {
		v := e.get(name)
		v.State = state
		if err := e.st.UpdateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	// Their operations, cut short, are still recorded running.
	cut := map[string]*model.Operation{}
	for name, kind := range map[string]string{"starting": "vm.start", "stopping": "vm.stop"} {
		op := &model.Operation{VMID: e.get(name).ID, Kind: kind, Status: model.OpRunning, StartedAt: time.Now().UTC(),
			Stages: []model.Stage{{Name: StepImageCheck, Status: StatusDone, At: time.Now().UTC()}}}
		if err := e.st.InsertOperation(ctx, op); err != nil {
			t.Fatal(err)
		}
		cut[name] = op
	}
	if err := e.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"starting": "reconcile left the vm stopped", "stopping": "reconcile left the vm running"} {
		ops, err := e.st.ListOperations(ctx, e.get(name).ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		var got *model.Operation
		for _, op := range ops {
			if op.ID == cut[name].ID {
				got = op
			}
			if op.Status == model.OpRunning {
				t.Errorf("%s: operation %d %s still running after reconcile", name, op.ID, op.Kind)
			}
		}
		last := got.Stages[len(got.Stages)-1]
		if got.Status != model.OpInterrupted || got.EndedAt.IsZero() || last.Name != StageReconciled || !strings.Contains(last.Detail, want) {
			t.Errorf("%s: cut-short %s closed as %s, last stage %+v; want interrupted, %q", name, got.Kind, got.Status, last, want)
		}
	}
	if v := e.get("starting"); v.State != model.StateStopped || alive(e.fake.Process(starting.ID)) || !strings.Contains(v.LastError, "cut short") {
		t.Fatalf("cut-short start: %s %q", v.State, v.LastError)
	}
	if v := e.get("stopping"); v.State != model.StateRunning || !alive(e.fake.Process(stopping.ID)) {
		t.Fatalf("cut-short stop: %s", v.State)
	}
	if _, err := os.Stat(e.layout.VMMSocket(starting.Short())); !os.IsNotExist(err) {
		t.Fatal("the cut-short start's socket was kept")
	}
}
