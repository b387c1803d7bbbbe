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

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/vmm"
)

func TestCreateRecordsStoppedVMWithDisk(t *testing.T) {
	e := newEnv(t)
	v := e.create("web")
	if v.State != model.StateStopped || v.GuestIP == "" || v.VMM != "fake" {
		t.Fatalf("created vm %+v", v)
	}
	if !exists(e.layout.VM(v.ID).RootDisk()) {
		t.Fatal("no root disk")
	}
	if e.fake.Count("launch") != 0 {
		t.Fatal("create without --start launched a vmm")
	}
	op, stages := e.lastOp("web")
	if op.Kind != "vm.create" || op.Status != model.OpDone || !slices.Equal(stages, []string{"vmm.choose:note", "vm.record:done", "vmm.validate:done", "disk.create:done", "guest.identity:note", "guest.identity:done", "vm.record-stopped:done"}) {
		t.Fatalf("journal %+v %v", op, stages)
	}
}

func TestStartRunsStepsAndIsIdempotent(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	if v.State != model.StateRunning || v.Runtime.PID == 0 || !alive(e.fake.Process(v.ID)) {
		t.Fatalf("vm not running: %+v", v)
	}
	short := v.Short()
	if v.Runtime.ControlSocket != e.layout.VMMSocket(short) || !strings.HasSuffix(v.Runtime.ControlSocket, "fc-"+short+".sock") {
		t.Fatalf("control socket %q not derived from the short id", v.Runtime.ControlSocket)
	}
	if v.Runtime.VsockCID < 3 || v.Runtime.VsockPath != e.layout.VsockPath(short) {
		t.Fatalf("vsock not derived: %+v", v.Runtime)
	}
	_, stages := e.lastOp("web")
	want := []string{"image.check:done", "disk.attach:done", "cleanup_stale_runtime:done", "vmm.launch:done", "vmm.boot:done", "vm.record-running:done"}
	if !slices.Equal(stages, want) {
		t.Fatalf("stages %v, want %v", stages, want)
	}

	again, err := e.svc.StartVM(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if again.Runtime.PID != v.Runtime.PID || e.fake.Count("launch") != 1 {
		t.Fatalf("second start relaunched: pid %d -> %d, launches %d", v.Runtime.PID, again.Runtime.PID, e.fake.Count("launch"))
	}
	op, stages := e.lastOp("web")
	if op.Status != model.OpDone || !slices.Equal(stages, []string{"vm.already-running:note"}) {
		t.Fatalf("idempotent start journal: %v %v", op.Status, stages)
	}
	if !strings.Contains(e.logs.String(), `"msg":"vm already running"`) {
		t.Fatal("already running not logged")
	}
}

func TestStartFailureUndoesAndRecordsError(t *testing.T) {
	e := newEnv(t)
	e.create("web")
	boom := errors.New("guest firmware exploded")
	e.fake.OnBoot = func(context.Context, vmm.Spec) error { return boom }
	_, err := e.svc.StartVM(context.Background(), "web")
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	v := e.get("web")
	if !strings.Contains(err.Error(), v.LogPath) {
		t.Fatalf("error %q does not name the vm log", err)
	}
	if v.State != model.StateError || !strings.Contains(v.LastError, "guest firmware exploded") || !strings.Contains(v.LastError, v.LogPath) {
		t.Fatalf("recorded %q / %q", v.State, v.LastError)
	}
	if v.Runtime != (model.Runtime{}) {
		t.Fatalf("runtime not cleared: %+v", v.Runtime)
	}
	p := e.fake.Process(v.ID)
	if alive(p) {
		t.Fatal("the vmm process of a failed start is still alive")
	}
	if exists(e.layout.VMMSocket(v.Short())) {
		t.Fatal("control socket left behind")
	}
	_, stages := e.lastOp("web")
	want := []string{"image.check:done", "disk.attach:done", "cleanup_stale_runtime:done", "vmm.launch:done", "vmm.boot:failed", "vmm.launch:undone", "cleanup_stale_runtime:undone", "disk.attach:undone"}
	if !slices.Equal(stages, want) {
		t.Fatalf("stages %v\nwant %v", stages, want)
	}
	// A later start works.
	e.fake.OnBoot = nil
	if v, err := e.svc.StartVM(context.Background(), "web"); err != nil || v.State != model.StateRunning || v.LastError != "" {
		t.Fatalf("restart after failure: %v %+v", err, v)
	}
}

func TestStartFailureRecordedWhenRequestCancelled(t *testing.T) {
	e := newEnv(t)
	e.create("web")
	ctx, cancel := context.WithCancel(context.Background())
	e.fake.OnBoot = func(context.Context, vmm.Spec) error {
		cancel() // the client went away mid-start
		return context.Canceled
	}
	if _, err := e.svc.StartVM(ctx, "web"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	v := e.get("web")
	if v.State != model.StateError || v.LastError == "" {
		t.Fatalf("cancelled start not recorded: %q %q", v.State, v.LastError)
	}
	if alive(e.fake.Process(v.ID)) {
		t.Fatal("vmm left running")
	}
}

func TestStartFailureWhoseRecordFailsIsLoggedAndReturned(t *testing.T) {
	e := newEnv(t)
	v := e.create("web")
	t.Cleanup(func() { os.RemoveAll(v.VMDir) }) // the closed store cannot delete it
	boom := errors.New("boot failed")
	e.fake.OnBoot = func(context.Context, vmm.Spec) error {
		e.st.Close() // every later write fails
		return boom
	}
	_, err := e.svc.StartVM(context.Background(), "web")
	if !errors.Is(err, boom) {
		t.Fatalf("the original error was not returned: %v", err)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `"level":"WARN","msg":"could not record the failed start"`) || !strings.Contains(logs, `"vm_id":"`+v.ID+`"`) {
		t.Fatalf("no warning with the vm's attributes:\n%s", logs)
	}
	if alive(e.fake.Process(v.ID)) {
		t.Fatal("vmm left running")
	}
}

func TestStartFailsClearlyWhenKernelIsMissing(t *testing.T) {
	e := newEnv(t)
	e.create("web")
	im, _ := e.st.ResolveImage(context.Background(), DefaultImage)
	os.Remove(im.KernelPath)
	_, err := e.svc.StartVM(context.Background(), "web")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), im.KernelPath) {
		t.Fatalf("err = %v", err)
	}
	if e.fake.Count("launch") != 0 {
		t.Fatal("launched without a kernel")
	}
	if v := e.get("web"); v.State != model.StateError || !strings.Contains(v.LastError, "missing") {
		t.Fatalf("recorded %q %q", v.State, v.LastError)
	}
}

func TestStopGracefulKeepsDisk(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	p := e.fake.Process(v.ID)
	got, err := e.svc.StopVM(context.Background(), "web", StopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.StateStopped || got.Runtime != (model.Runtime{}) || !got.UpdatedAt.After(v.UpdatedAt) {
		t.Fatalf("after stop: %+v", got)
	}
	if alive(p) {
		t.Fatal("vmm still alive")
	}
	if sig := signalsOf(t, v); sig != "USR1" {
		t.Fatalf("the vmm got %q: the graceful path must end it, not a kill", sig)
	}
	_, stages := e.lastOp("web")
	if !slices.Equal(stages, []string{"graceful_shutdown:done", "wait_for_exit:done", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("stages %v", stages)
	}
	if !exists(e.layout.VM(v.ID).RootDisk()) || exists(v.Runtime.ControlSocket) {
		t.Fatal("stop must keep the disk and remove the control socket")
	}
}

func TestStopTimeoutIsAStageNotAnError(t *testing.T) {
	e := newEnv(t)
	e.fake.IgnoreShutdown = true
	v := e.started("web")
	got, err := e.svc.StopVM(context.Background(), "web", StopOptions{Timeout: 150 * time.Millisecond})
	if err != nil {
		t.Fatalf("timeout must not be an error: %v", err)
	}
	if got.State != model.StateStopped || alive(e.fake.Process(v.ID)) {
		t.Fatal("vm not stopped after the timeout")
	}
	op, stages := e.lastOp("web")
	if op.Status != model.OpDone || !slices.Equal(stages, []string{"graceful_shutdown:done", "graceful_shutdown_timeout:note", "kill_running_vm:done", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("journal %v %v", op.Status, stages)
	}
}

func TestStopCleansStaleRuntime(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	p := e.fake.Process(v.ID)
	// The VMM dies behind banger's back.
	syscall.Kill(p.PID, syscall.SIGKILL)
	for alive(p) {
		time.Sleep(10 * time.Millisecond)
	}
	// Its watcher records the exit and tears the runtime down.
	for e.get("web").State == model.StateRunning {
		time.Sleep(10 * time.Millisecond)
	}
	if w := e.get("web"); w.State != model.StateError || w.LastExit == nil || w.Runtime.PID != 0 || exists(v.Runtime.ControlSocket) {
		t.Fatalf("after the vmm died: state %s, exit %+v, runtime %+v, socket left %v", w.State, w.LastExit, w.Runtime, exists(v.Runtime.ControlSocket))
	}
	if op, stages := e.lastOp("web"); op.Kind != "vm.exited" || !slices.Equal(stages, []string{"vmm.exited:note", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("journal %s %v", op.Kind, stages)
	}
	// A runtime left recorded (a watcher that could not run): put the
	// record and the socket back.
	if err := e.st.UpdateVM(context.Background(), v); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.Runtime.ControlSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := e.svc.StopVM(context.Background(), "web", StopOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.StateStopped || exists(v.Runtime.ControlSocket) || e.fake.Count("shutdown") != 0 {
		t.Fatalf("stale stop: state %s socket left %v shutdowns %d", got.State, exists(v.Runtime.ControlSocket), e.fake.Count("shutdown"))
	}
	_, stages := e.lastOp("web")
	if !slices.Equal(stages, []string{"vmm.not-running:note", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("stages %v", stages)
	}
}

func TestKillDefaultTERM(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	got, err := e.svc.KillVM(context.Background(), "web", "")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.StateStopped || alive(e.fake.Process(v.ID)) {
		t.Fatal("not stopped")
	}
	if sig := signalsOf(t, v); sig != "TERM" {
		t.Fatalf("vmm received %q, want TERM", sig)
	}
	_, stages := e.lastOp("web")
	if !slices.Equal(stages, []string{"send_signal:done", "wait_for_exit:done", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("stages %v", stages)
	}
}

func TestKillExplicitSignal(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	if _, err := e.svc.KillVM(context.Background(), "web", "USR2"); err != nil {
		t.Fatal(err)
	}
	if sig := signalsOf(t, v); sig != "USR2" {
		t.Fatalf("vmm received %q, want USR2", sig)
	}
	v = e.started("db")
	if _, err := e.svc.KillVM(context.Background(), "db", "KILL"); err != nil {
		t.Fatal(err)
	}
	if alive(e.fake.Process(v.ID)) || signalsOf(t, v) != "" {
		t.Fatal("KILL must end the process without a trap running")
	}
}

func TestKillRejectsUnknownSignal(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	_, err := e.svc.KillVM(context.Background(), "web", "SIGBOGUS")
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "SIGBOGUS") {
		t.Fatalf("err = %v", err)
	}
	if got := e.get("web"); got.State != model.StateRunning || !alive(e.fake.Process(v.ID)) {
		t.Fatal("a rejected kill changed the vm")
	}
}

func TestKillTimeoutIsAStage(t *testing.T) {
	e := newEnv(t)
	e.fake.IgnoreTERM = true
	e.svc.cfg.KillTimeout = 200 * time.Millisecond
	v := e.started("web")
	if _, err := e.svc.KillVM(context.Background(), "web", "TERM"); err != nil {
		t.Fatalf("timeout must not be an error: %v", err)
	}
	if alive(e.fake.Process(v.ID)) || e.get("web").State != model.StateStopped {
		t.Fatal("not stopped")
	}
	_, stages := e.lastOp("web")
	if !slices.Equal(stages, []string{"send_signal:done", "signal_timeout:note", "kill_running_vm:done", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("stages %v", stages)
	}
}

func TestKillNotRunningCleansUp(t *testing.T) {
	e := newEnv(t)
	e.create("web")
	got, err := e.svc.KillVM(context.Background(), "web", "")
	if err != nil || got.State != model.StateStopped {
		t.Fatalf("%v %v", err, got.State)
	}
	_, stages := e.lastOp("web")
	if !slices.Equal(stages, []string{"vmm.not-running:note", "vmm.cleanup:done", "cleanup_runtime:done"}) {
		t.Fatalf("stages %v", stages)
	}
}

func TestRestartHoldsTheLockThroughout(t *testing.T) {
	e := newEnv(t)
	e.started("web")
	inStop := make(chan struct{})
	release := make(chan struct{})
	e.fake.OnShutdown = func(context.Context, vmm.Spec) error {
		close(inStop)
		<-release
		return nil
	}
	restartDone := make(chan error, 1)
	go func() {
		_, err := e.svc.RestartVM(context.Background(), "web", StopOptions{Timeout: 5 * time.Second})
		restartDone <- err
	}()
	<-inStop
	startDone := make(chan *model.VM, 1)
	go func() {
		v, err := e.svc.StartVM(context.Background(), "web")
		if err != nil {
			t.Error(err)
		}
		startDone <- v
	}()
	select {
	case <-startDone:
		t.Fatal("a start slipped into a restart")
	case <-time.After(150 * time.Millisecond):
	}
	close(release)
	if err := <-restartDone; err != nil {
		t.Fatal(err)
	}
	v := <-startDone
	if n := e.fake.Count("launch"); n != 2 {
		t.Fatalf("launches = %d, want 2: the waiting start must find the restarted vm running", n)
	}
	if v.State != model.StateRunning || v.Runtime.PID != e.get("web").Runtime.PID {
		t.Fatalf("after restart: %+v", v)
	}
	ops, _ := e.svc.Operations(context.Background(), "web", 2)
	if ops[1].Kind != "vm.restart" || ops[1].Status != model.OpDone {
		t.Fatalf("restart journal %+v", ops[1])
	}
	var names []string
	for _, st := range ops[1].Stages {
		names = append(names, st.Name)
	}
	if !slices.Contains(names, "graceful_shutdown") || !slices.Contains(names, "vmm.launch") {
		t.Fatalf("restart stages %v", names)
	}
}

func TestDeleteRemovesEverything(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	other := e.create("db")
	kh := e.layout.KnownHosts()
	pins := v.GuestIP + " ssh-ed25519 AAAAweb\nweb ssh-ed25519 AAAAweb\n" + other.GuestIP + " ssh-ed25519 AAAAdb\n"
	if err := os.WriteFile(kh, []byte(pins), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteVM(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.ResolveVM(context.Background(), v.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("record still there: %v", err)
	}
	if alive(e.fake.Process(v.ID)) || exists(v.VMDir) || exists(v.Runtime.ControlSocket) {
		t.Fatal("process, dir or socket left behind")
	}
	b, _ := os.ReadFile(kh)
	if string(b) != other.GuestIP+" ssh-ed25519 AAAAdb\n" {
		t.Fatalf("known_hosts after delete:\n%s", b)
	}
	if ops, _ := e.st.ListOperations(context.Background(), v.ID, 0); len(ops) != 0 {
		t.Fatal("journal of a deleted vm kept")
	}
	// Its IP and name are free again.
	again := e.create("web")
	if again.GuestIP != v.GuestIP {
		t.Fatalf("ip not released: got %s, want %s", again.GuestIP, v.GuestIP)
	}
}

// TestDeleteKillFailureFailsAndKeepsTheVM: a VMM that cannot be killed
// fails the delete; the VM keeps its record, disk and runtime for a retry.
func TestDeleteKillFailureFailsAndKeepsTheVM(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	real := e.svc.signal
	e.svc.signal = func(pid int, st uint64, sig syscall.Signal) error {
		return errors.New("operation not permitted")
	}
	err := e.svc.DeleteVM(context.Background(), "web")
	if err == nil || !strings.Contains(err.Error(), "operation not permitted") || !strings.Contains(err.Error(), StageKillRunningVM) {
		t.Fatalf("err = %v", err)
	}
	got := e.get("web")
	if got.State != model.StateError || got.Runtime.PID != v.Runtime.PID || !alive(e.fake.Process(v.ID)) || !exists(e.layout.VM(v.ID).RootDisk()) {
		t.Fatalf("a failed delete must keep the vm: %s %+v", got.State, got.Runtime)
	}
	e.svc.signal = real
	if err := e.svc.DeleteVM(context.Background(), "web"); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if alive(e.fake.Process(v.ID)) || exists(v.VMDir) {
		t.Fatal("the retried delete left the vmm or the dir")
	}
}

func TestPerVMSerializationAndCrossVMParallelism(t *testing.T) {
	e := newEnv(t)
	e.create("a")
	e.create("b")
	entered := make(chan string, 4)
	release := make(chan struct{})
	e.fake.OnLaunch = func(_ context.Context, spec vmm.Spec) error {
		entered <- spec.Name
		if spec.Name == "a" {
			<-release
		}
		return nil
	}
	errc := make(chan error, 3)
	go func() { _, err := e.svc.StartVM(context.Background(), "a"); errc <- err }()
	if got := <-entered; got != "a" {
		t.Fatalf("first launch %s", got)
	}
	// A second operation on a waits for the lock...
	stopDone := make(chan struct{})
	go func() {
		_, err := e.svc.StopVM(context.Background(), "a", StopOptions{Timeout: time.Second})
		errc <- err
		close(stopDone)
	}()
	// ...while b starts and finishes in parallel.
	if _, err := e.svc.StartVM(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	if got := <-entered; got != "b" {
		t.Fatalf("second launch %s", got)
	}
	select {
	case <-stopDone:
		t.Fatal("stop of a ran while a's start held the lock")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-stopDone
	for i := 0; i < 2; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if st := e.get("a").State; st != model.StateStopped {
		t.Fatalf("a is %s: stop must run after the start it waited for", st)
	}
	if e.svc.locks.size() != 0 {
		t.Fatalf("%d locks leaked", e.svc.locks.size())
	}
}

func TestLockWaitRespectsContext(t *testing.T) {
	e := newEnv(t)
	v := e.started("web")
	unlock, err := e.svc.locks.lock(context.Background(), v.ID)
	if err != nil {
		t.Fatal(err)
	}
	// Every operation, detached ones included, stops waiting for the lock
	// when its request ends; none of them then runs.
	for name, call := range map[string]func(ctx context.Context) error{
		"start":  func(ctx context.Context) error { _, err := e.svc.StartVM(ctx, "web"); return err },
		"stop":   func(ctx context.Context) error { _, err := e.svc.StopVM(ctx, "web", StopOptions{}); return err },
		"kill":   func(ctx context.Context) error { _, err := e.svc.KillVM(ctx, "web", ""); return err },
		"delete": func(ctx context.Context) error { return e.svc.DeleteVM(ctx, "web") },
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := call(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: err = %v, want the wait to end with the request", name, err)
		}
	}
	unlock()
	if got := e.get("web"); got.State != model.StateRunning || !alive(e.fake.Process(v.ID)) {
		t.Fatalf("an operation that never got the lock changed the vm: %s", got.State)
	}
	if e.svc.locks.size() != 0 {
		t.Fatal("lock leaked")
	}
}
