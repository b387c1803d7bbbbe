package daemon

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
)

// Each test here pins one lifecycle rule: breaking the rule in the code
// makes exactly this kind of test fail.

func TestVsockCIDDerivesFromTheGuestIP(t *testing.T) {
	e := newEnv(t)
	e.create("a")
	e.create("b")
	for _, name := range []string{"a", "b"} {
		v, err := e.svc.StartVM(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		want, err := network.CIDFor(v.GuestIP)
		if err != nil {
			t.Fatal(err)
		}
		if v.Runtime.VsockCID != want {
			t.Fatalf("%s: cid %d, want %d (from %s)", name, v.Runtime.VsockCID, want, v.GuestIP)
		}
	}
}

func TestDefaultTimeoutsAreThirtySeconds(t *testing.T) {
	st, err := store.Open(context.Background(), t.TempDir()+"/db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := New(Config{Drivers: vmm.Registry{"fake": nil}}, st)
	if err != nil {
		t.Fatal(err)
	}
	if svc.cfg.KillTimeout != 30*time.Second || svc.cfg.GracefulTimeout != 30*time.Second {
		t.Fatalf("kill wait %s, graceful %s: the seed's defaults are 30s", svc.cfg.KillTimeout, svc.cfg.GracefulTimeout)
	}
}

func TestFailedOperationIsJournalledFailed(t *testing.T) {
	e := newEnv(t)
	e.create("web")
	e.fake.OnBoot = func(context.Context, vmm.Spec) error { return errors.New("no boot") }
	if _, err := e.svc.StartVM(context.Background(), "web"); err == nil {
		t.Fatal("start succeeded")
	}
	op, _ := e.lastOp("web")
	if op.Kind != "vm.start" || op.Status != model.OpFailed || !strings.Contains(op.Error, "no boot") || op.EndedAt.IsZero() {
		t.Fatalf("journal %+v", op)
	}
}

func TestStopHonoursThePerRequestTimeout(t *testing.T) {
	e := newEnv(t)
	e.svc.cfg.GracefulTimeout = 3 * time.Second // not the request's
	e.fake.IgnoreShutdown = true
	e.started("web")
	if _, err := e.svc.StopVM(context.Background(), "web", StopOptions{Timeout: 150 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	op, _ := e.lastOp("web")
	i := slices.IndexFunc(op.Stages, func(s model.Stage) bool { return s.Name == StageGracefulShutdownTimeout })
	if i < 0 || !strings.Contains(op.Stages[i].Detail, "150ms") {
		t.Fatalf("stages %+v: the timeout note must name the request's 150ms", op.Stages)
	}
}

// TestStopFinishesWhenTheRequestIsCancelled: the client goes away right
// after the shutdown request; the stop still waits for the guest and
// records the VM stopped (it does not turn into a kill).
func TestStopFinishesWhenTheRequestIsCancelled(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	ctx, cancel := context.WithCancel(context.Background())
	e.fake.OnShutdown = func(context.Context, vmm.Spec) error { cancel(); return nil }
	if _, err := e.svc.StopVM(ctx, "web", StopOptions{Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	_, stages := e.lastOp("web")
	if !slices.Contains(stages, "wait_for_exit:done") || slices.Contains(stages, "kill_running_vm:done") {
		t.Fatalf("stages %v: a cancelled request must not cut the graceful wait short", stages)
	}
	if got := e.get("web"); got.State != model.StateStopped || alive(e.fake.Process(v.ID)) {
		t.Fatalf("state %s", got.State)
	}
}

func TestRestartStopHalfFinishesWhenTheRequestIsCancelled(t *testing.T) {
	e := newEnv(t)
	e.started("web")
	ctx, cancel := context.WithCancel(context.Background())
	e.fake.OnShutdown = func(context.Context, vmm.Spec) error { cancel(); return nil }
	_, err := e.svc.RestartVM(ctx, "web", StopOptions{Timeout: 5 * time.Second})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v: the start half ends with the request", err)
	}
	ops, _ := e.svc.Operations(context.Background(), "web", 1)
	var stages []string
	for _, s := range ops[0].Stages {
		stages = append(stages, s.Name+":"+s.Status)
	}
	if !slices.Contains(stages, "wait_for_exit:done") || !slices.Contains(stages, "cleanup_runtime:done") {
		t.Fatalf("stages %v: the stop half must finish", stages)
	}
	if e.fake.Count("launch") != 1 {
		t.Fatal("the start half ran on a cancelled request")
	}
}

// countingStorage is a real backend, counting removals.
type countingStorage struct {
	storage.Backend
	mu      *sync.Mutex
	removed *[]string
}

func (c countingStorage) Remove(ctx context.Context, d storage.Disk) error {
	c.mu.Lock()
	*c.removed = append(*c.removed, d.Path)
	c.mu.Unlock()
	return c.Backend.Remove(ctx, d)
}

func TestDeleteRemovesTheDiskAndFinishesWhenCancelled(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var removed []string
	e.svc.cfg.DiskBackend = func(k storage.Kind, o storage.Options) (storage.Backend, error) {
		b, err := storage.New(k, o)
		return countingStorage{Backend: b, mu: &mu, removed: &removed}, err
	}
	v := e.started("web")
	ctx, cancel := context.WithCancel(context.Background())
	real := e.svc.signal
	e.svc.signal = func(pid int, st uint64, sig syscall.Signal) error {
		cancel() // the client goes away while the vmm is being killed
		return real(pid, st, sig)
	}
	if err := e.svc.DeleteVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{e.svc.diskPath(v)}) {
		t.Fatalf("storage removals %v: the delete must hand the disk back to its strategy", removed)
	}
	if _, err := e.st.GetVM(context.Background(), v.ID); err == nil || exists(v.VMDir) {
		t.Fatal("a cancelled delete left the record or the dir")
	}
}

// TestStopWhoseRequestFailsLeavesTheVMRunning: the seed's rule: no silent
// escalation to a kill; --force is the explicit one.
func TestStopWhoseRequestFailsLeavesTheVMRunning(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	e.fake.OnShutdown = func(context.Context, vmm.Spec) error { return errors.New("control socket gone") }
	_, err := e.svc.StopVM(context.Background(), "web", StopOptions{})
	if err == nil || !strings.Contains(err.Error(), "control socket gone") || !strings.Contains(err.Error(), "still running") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("err = %v", err)
	}
	got := e.get("web")
	if got.State != model.StateRunning || got.Runtime.PID != v.Runtime.PID || !alive(e.fake.Process(v.ID)) {
		t.Fatalf("after a failed stop: %s %+v", got.State, got.Runtime)
	}
	op, stages := e.lastOp("web")
	if op.Status != model.OpFailed || !slices.Equal(stages, []string{"graceful_shutdown:failed"}) {
		t.Fatalf("journal %s %v", op.Status, stages)
	}

	got, err = e.svc.StopVM(context.Background(), "web", StopOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.StateStopped || alive(e.fake.Process(v.ID)) {
		t.Fatalf("--force left %s", got.State)
	}
	_, stages = e.lastOp("web")
	if !slices.Equal(stages, []string{"graceful_shutdown:failed", "force:note", "kill_running_vm:done", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("forced stop stages %v", stages)
	}
}

func TestKillWhoseSignalFailsLeavesTheVMRunning(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	real := e.svc.signal
	e.svc.signal = func(int, uint64, syscall.Signal) error { return errors.New("operation not permitted") }
	_, err := e.svc.KillVM(context.Background(), "web", "TERM")
	if err == nil || !strings.Contains(err.Error(), "operation not permitted") || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("err = %v", err)
	}
	e.svc.signal = real
	if got := e.get("web"); got.State != model.StateRunning || !alive(e.fake.Process(v.ID)) || signalsOf(t, v) != "" {
		t.Fatalf("after a failed kill: %s", got.State)
	}
	if _, stages := e.lastOp("web"); !slices.Equal(stages, []string{"send_signal:failed"}) {
		t.Fatalf("stages %v", stages)
	}
}

// TestEveryStartErrorNamesTheLog breaks each thing a start checks before
// its steps run.
func TestEveryStartErrorNamesTheLog(t *testing.T) {
	for name, breakIt := range map[string]func(v *model.VM){
		"driver":     func(v *model.VM) { v.VMM = "nosuch" },
		"cid":        func(v *model.VM) { v.GuestIP = "" },
		"validation": func(v *model.VM) { v.VCPUs = 0 },
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			v := e.create("web")
			breakIt(v)
			if err := e.st.UpdateVM(context.Background(), v); err != nil {
				t.Fatal(err)
			}
			_, err := e.svc.StartVM(context.Background(), "web")
			if err == nil || !strings.Contains(err.Error(), v.LogPath) {
				t.Fatalf("err = %v: does not name the vm log", err)
			}
			if got := e.get("web"); got.State != model.StateError || !strings.Contains(got.LastError, v.LogPath) {
				t.Fatalf("recorded %s %q", got.State, got.LastError)
			}
			if e.fake.Count("launch") != 0 {
				t.Fatal("launched anyway")
			}
			got := e.get("web")
			got.VMM, got.VCPUs = "fake", 1
			_ = e.st.UpdateVM(context.Background(), got) // let the env's cleanup delete it
		})
	}
}

func TestARecordedVsockPathIsKept(t *testing.T) {
	e := newEnv(t)
	v := e.create("web")
	kept := e.layout.RuntimeDir + "/kept.vsock"
	v.Runtime.VsockPath = kept
	if err := e.st.UpdateVM(context.Background(), v); err != nil {
		t.Fatal(err)
	}
	got, err := e.svc.StartVM(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if got.Runtime.VsockPath != kept {
		t.Fatalf("vsock path %q, want the recorded %q", got.Runtime.VsockPath, kept)
	}
}

// TestTeardownIsDerivedFromTheStartSteps: every start step that declares a
// release is released by a teardown, in reverse, and nothing else is.
func TestTeardownIsDerivedFromTheStartSteps(t *testing.T) {
	e, _ := newNetEnv(t)
	if _, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}}); err != nil {
		t.Fatal(err)
	}
	v, err := e.svc.StartVM(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	op := e.svc.newOperation("test", v)
	var want []string
	start := e.svc.buildStartSteps(op, e.svc.recordedContext(v))
	for i := len(start) - 1; i >= 0; i-- {
		if r := start[i].Release; r != nil {
			want = append(want, cmp.Or(r.Stage, start[i].Name))
		}
	}
	if !slices.Equal(want, []string{"cap.publish", StageKillRunningVM, StageVMMCleanup, StepNetworkPolicy, StepNetworkTap, StepDiskAttach}) {
		t.Fatalf("releases %v", want)
	}
	if _, err := e.svc.KillVM(context.Background(), "web", "KILL"); err != nil {
		t.Fatal(err)
	}
	_, stages := e.lastOp("web")
	var got []string
	for _, s := range stages {
		if n, _, _ := strings.Cut(s, ":"); n != StageSendSignal && n != StageWaitForExit && n != StageCleanupRuntime {
			got = append(got, n)
		}
	}
	// The VMM is gone after SIGKILL: its release is not held; nor is the
	// disk's, which holds a device only under dm-snapshot.
	if !slices.Equal(got, []string{"cap.publish", StageVMMCleanup, StepNetworkPolicy, StepNetworkTap}) {
		t.Fatalf("teardown stages %v", stages)
	}
}

// TestReconcileLeavesStoppedVMsAlone: startup reconciles only VMs whose
// record claims a runtime; a stopped VM is not even locked (a fleet of
// stopped VMs costs nothing at start-up).
func TestReconcileLeavesStoppedVMsAlone(t *testing.T) {
	e := newEnv(t)
	v := e.create("idle")
	unlock, err := e.svc.locks.lock(context.Background(), v.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := e.svc.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile waited on a stopped vm: %v", err)
	}
}
