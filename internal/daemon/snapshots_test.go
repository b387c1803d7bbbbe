package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/vmm"
)

// pausedGuestsIgnoreShutdown makes the fake follow the real rule: a paused
// guest cannot hear Ctrl-Alt-Del.
func pausedGuestsIgnoreShutdown(e *env) {
	e.fake.OnShutdown = func(_ context.Context, spec vmm.Spec) error {
		if e.fake.Paused(spec.ID) {
			return errors.New("fake: the guest is paused and cannot hear ctrl-alt-del")
		}
		return nil
	}
}

func TestPauseResume(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.started("web")
	pid := v.Runtime.PID
	v, err := e.svc.PauseVM(ctx, "web")
	if err != nil || v.State != model.StatePaused || !e.fake.Paused(v.ID) {
		t.Fatalf("pause: %v state %s paused %v", err, v.State, e.fake.Paused(v.ID))
	}
	if _, stages := e.lastOp("web"); !slices.Equal(stages, []string{StepRecordPaused + ":done", StepVMMPause + ":done"}) {
		t.Fatalf("pause journal %v", stages)
	}
	if v, err = e.svc.PauseVM(ctx, "web"); err != nil || v.State != model.StatePaused {
		t.Fatalf("pause again: %v %s", err, v.State)
	}
	// A start must not treat the paused VMM as a leftover to kill.
	if _, err := e.svc.StartVM(ctx, "web"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "banger vm resume web") {
		t.Fatalf("start of a paused vm: %v", err)
	}
	if _, _, err := e.svc.SSHTarget(ctx, "web"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "banger vm resume web") {
		t.Fatalf("ssh to a paused vm: %v", err)
	}
	if got := e.get("web"); got.State != model.StatePaused || got.Runtime.PID != pid || !alive(vmmProcess(got)) {
		t.Fatalf("after a refused start: %s pid %d (was %d)", got.State, got.Runtime.PID, pid)
	}
	if v, err = e.svc.ResumeVM(ctx, "web"); err != nil || v.State != model.StateRunning || e.fake.Paused(v.ID) {
		t.Fatalf("resume: %v state %s paused %v", err, v.State, e.fake.Paused(v.ID))
	}
	if v, err = e.svc.ResumeVM(ctx, "web"); err != nil || v.State != model.StateRunning {
		t.Fatalf("resume again: %v", err)
	}
	e.create("idle")
	if _, err := e.svc.PauseVM(ctx, "idle"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("pause of a stopped vm: %v", err)
	}
	if _, err := e.svc.ResumeVM(ctx, "idle"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("resume of a stopped vm: %v", err)
	}
	if e.get("idle").State != model.StateStopped {
		t.Fatal("a refused pause changed the record")
	}
}

// TestStopPausedResumesFirst: a paused VM is resumed so that it shuts down
// gracefully; kill, restart and delete take a paused VM as it is.
func TestStopPausedResumesFirst(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	pausedGuestsIgnoreShutdown(e)
	for _, name := range []string{"a", "b", "c", "d"} {
		e.started(name)
		if _, err := e.svc.PauseVM(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	v, err := e.svc.StopVM(ctx, "a", StopOptions{})
	if err != nil || v.State != model.StateStopped || alive(e.fake.Process(v.ID)) {
		t.Fatalf("stop of a paused vm: %v %s", err, v.State)
	}
	_, stages := e.lastOp("a")
	if !slices.Contains(stages, StepVMMResume+":done") || !slices.Contains(stages, StageWaitForExit+":done") ||
		slices.Index(stages, StepVMMResume+":done") > slices.Index(stages, StageGracefulShutdown+":done") {
		t.Fatalf("stop journal %v: want a resume, then the graceful shutdown", stages)
	}
	if v, err = e.svc.KillVM(ctx, "b", "KILL"); err != nil || v.State != model.StateStopped || alive(e.fake.Process(v.ID)) {
		t.Fatalf("kill of a paused vm: %v", err)
	}
	if v, err = e.svc.RestartVM(ctx, "c", StopOptions{}); err != nil || v.State != model.StateRunning {
		t.Fatalf("restart of a paused vm: %v", err)
	}
	old := e.fake.Process(e.get("d").ID)
	if err := e.svc.DeleteVM(ctx, "d"); err != nil || alive(old) {
		t.Fatalf("delete of a paused vm: %v alive %v", err, alive(old))
	}
}

// TestReconcileReadoptsPausedVM: after a daemon restart a paused VM whose
// VMM lives is kept, paused, with the same process; if the daemon died
// between recording the pause and making it, the VM is paused now.
func TestReconcileReadoptsPausedVM(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.started("web")
	if _, err := e.svc.PauseVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := e.fake.Resume(ctx, e.svc.runtimeSpec(v)); err != nil { // the pause the crash cut short
		t.Fatal(err)
	}
	if err := e.svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got := e.get("web")
	if got.State != model.StatePaused || got.Runtime.PID != v.Runtime.PID || !alive(vmmProcess(got)) || !e.fake.Paused(v.ID) {
		t.Fatalf("after reconcile: %s pid %d alive %v paused %v", got.State, got.Runtime.PID, alive(vmmProcess(got)), e.fake.Paused(v.ID))
	}
}

func snapshotFiles(t *testing.T, dir string) map[string]os.FileMode {
	t.Helper()
	out := map[string]os.FileMode{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		fi, err := en.Info()
		if err != nil {
			t.Fatal(err)
		}
		out[en.Name()] = fi.Mode().Perm()
	}
	return out
}

func writeDisk(t *testing.T, e *env, v *model.VM, data string) {
	t.Helper()
	f, err := os.OpenFile(e.layout.VM(v.ID).RootDisk(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(data), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func readDisk(t *testing.T, e *env, v *model.VM, n int) string {
	t.Helper()
	f, err := os.Open(e.layout.VM(v.ID).RootDisk())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 4096); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSnapshotRestoreDelete: a snapshot holds the state and a clone of the
// disk at its instant, in a 0700 dir of 0600 files; the VM goes on; a
// restore puts the disk back and launches restoring the state; delete
// removes the dir and the record.
func TestSnapshotRestoreDelete(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.started("web")
	writeDisk(t, e, v, "BEFORE")
	sn, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.get("web"); got.State != model.StateRunning || e.fake.Paused(v.ID) || got.Runtime.PID != v.Runtime.PID {
		t.Fatalf("after snapshot: %s paused %v", got.State, e.fake.Paused(v.ID))
	}
	_, stages := e.lastOp("web")
	want := []string{StepSnapshotDir + ":done", StepVMMPause + ":done", StepSnapshotSave + ":done", StepSnapshotDisk + ":done",
		StepSnapshotRecord + ":done", StepVMMResume + ":done", StepRecordRunning + ":done"}
	if !slices.Equal(stages, want) {
		t.Fatalf("snapshot journal %v, want %v", stages, want)
	}
	if sn.Dir != filepath.Join(e.svc.SnapshotsDir(), sn.ID) || sn.VMID != v.ID || sn.ImageID != v.ImageID || sn.MemoryMiB != 128 || sn.SizeBytes <= 0 {
		t.Fatalf("snapshot record %+v", sn)
	}
	fi, err := os.Stat(sn.Dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("snapshot dir: %v %v", fi, err)
	}
	files := snapshotFiles(t, sn.Dir)
	for _, f := range []string{SnapshotDiskFile, vmm.SnapshotMetaFile, "state.fake"} {
		if files[f] != 0o600 {
			t.Errorf("snapshot file %s mode %v (all: %v)", f, files[f], files)
		}
	}
	got, err := e.svc.GetSnapshot(ctx, "s1")
	if err != nil || got.ID != sn.ID {
		t.Fatalf("get: %v", err)
	}
	if list, _ := e.svc.ListSnapshots(ctx); len(list) != 1 {
		t.Fatalf("list: %v", list)
	}

	writeDisk(t, e, v, "AFTER!")
	var restoredFrom string
	e.fake.OnLaunch = func(_ context.Context, spec vmm.Spec) error {
		if spec.Restore != nil {
			restoredFrom = spec.Restore.Dir
		}
		return nil
	}
	rv, err := e.svc.RestoreVM(ctx, "web", "s1")
	if err != nil || rv.State != model.StateRunning {
		t.Fatalf("restore: %v", err)
	}
	if restoredFrom != sn.Dir {
		t.Fatalf("launch restored from %q, want %q", restoredFrom, sn.Dir)
	}
	if d := readDisk(t, e, v, 6); d != "BEFORE" {
		t.Fatalf("disk after restore holds %q, want the snapshot's", d)
	}
	if old := v.Runtime.PID; old == rv.Runtime.PID || alive(vmm.Process{PID: old, StartTime: v.Runtime.PIDStartTime}) {
		t.Fatalf("the old vmm (pid %d) still runs after the restore", old)
	}
	if err := e.svc.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if exists(sn.Dir) {
		t.Fatal("snapshot dir left after delete")
	}
	if _, err := e.svc.GetSnapshot(ctx, "s1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

// TestSnapshotPausedAndStop: a paused VM stays paused; --stop ends it.
func TestSnapshotPausedAndStop(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := e.started("web")
	if _, err := e.svc.PauseVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "p"}); err != nil {
		t.Fatal(err)
	}
	if got := e.get("web"); got.State != model.StatePaused || !e.fake.Paused(v.ID) {
		t.Fatalf("a paused vm after snapshot: %s", got.State)
	}
	if _, err := e.svc.ResumeVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	sn, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Stop: true})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sn.Name, "web-") {
		t.Fatalf("default name %q", sn.Name)
	}
	if got := e.get("web"); got.State != model.StateStopped || alive(vmmProcess(v)) {
		t.Fatalf("after --stop: %s", got.State)
	}
	for _, n := range []string{"p", sn.Name} {
		if err := e.svc.DeleteSnapshot(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSnapshotRefusals: bad input changes nothing and leaves no dir.
func TestSnapshotRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create("idle")
	e.started("web")
	if _, err := e.svc.CreateSnapshot(ctx, "idle", SnapshotOptions{Name: "x"}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("snapshot of a stopped vm: %v", err)
	}
	if _, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "Bad Name"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "s1"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	if entries, _ := os.ReadDir(e.svc.SnapshotsDir()); len(entries) != 1 {
		t.Fatalf("snapshot dirs %v: want only s1's", entries)
	}
	if got := e.get("web"); got.State != model.StateRunning || e.fake.Paused(got.ID) {
		t.Fatalf("refusals left the vm %s", got.State)
	}
	if _, err := e.svc.RestoreVM(ctx, "web", "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("restore of a missing snapshot: %v", err)
	}
	if err := e.svc.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreRefusedForAnotherShapeOrVM: a snapshot restores only into the
// VM it was taken of, with the same shape; a refusal touches nothing.
func TestRestoreRefusedForAnotherShapeOrVM(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.started("web")
	if _, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	big, err := e.svc.CreateVM(ctx, api.CreateVMRequest{Name: "big", VCPUs: 1, MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	writeDisk(t, e, big, "BIGVM!")
	_, err = e.svc.RestoreVM(ctx, "big", "s1")
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "128 MiB") || !strings.Contains(err.Error(), "256 MiB") {
		t.Fatalf("restore into another shape: %v", err)
	}
	if got := e.get("big"); got.State != model.StateStopped || readDisk(t, e, big, 6) != "BIGVM!" {
		t.Fatalf("a refused restore changed the vm: %s", got.State)
	}
	e.create("twin") // same shape, another vm
	if _, err := e.svc.RestoreVM(ctx, "twin", "s1"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "taken of vm \"web\"") {
		t.Fatalf("restore into another vm: %v", err)
	}
	if err := e.svc.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
}

// TestDeletingAVMKeepsItsSnapshots: a snapshot is an independent copy: it
// outlives its VM; its image cannot be deleted while it exists.
func TestDeletingAVMKeepsItsSnapshots(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.started("web")
	sn, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "keep"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.GetSnapshot(ctx, "keep"); err != nil || !exists(filepath.Join(sn.Dir, SnapshotDiskFile)) {
		t.Fatalf("snapshot after its vm's delete: %v", err)
	}
	err = e.svc.DeleteImage(ctx, DefaultImage)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), `snapshot "keep"`) {
		t.Fatalf("delete of an image a snapshot uses: %v", err)
	}
	if _, err := e.st.ResolveImage(ctx, DefaultImage); err != nil {
		t.Fatalf("image gone after a refused delete: %v", err)
	}
	if err := e.svc.DeleteSnapshot(ctx, "keep"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeleteImage(ctx, DefaultImage); err != nil {
		t.Fatalf("delete of the image once the snapshot is gone: %v", err)
	}
}

// TestOrphanSnapshotDirsRemoved: a dir a daemon crash left mid-snapshot
// (no record) goes at start-up; recorded ones stay.
func TestOrphanSnapshotDirsRemoved(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.started("web")
	sn, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(e.svc.SnapshotsDir(), "0123abcd")
	if err := os.Mkdir(orphan, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(orphan, "state.fake"), bytes.Repeat([]byte{1}, 10), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.removeOrphanSnapshotDirs(ctx); err != nil {
		t.Fatal(err)
	}
	if exists(orphan) || !exists(sn.Dir) {
		t.Fatalf("orphan left %v, recorded removed %v", exists(orphan), !exists(sn.Dir))
	}
	if err := e.svc.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
}

// TestForkRefusals: a fork takes its snapshot's shape (another is refused
// naming both), and needs the guest agent in the image (the fake image
// has none): refused with the reason, nothing made, vm fork leaves no
// snapshot behind.
func TestForkRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.started("web")
	sn, err := e.svc.CreateSnapshot(ctx, "web", SnapshotOptions{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	if sn.Kind != model.SnapshotUser || sn.GuestIP == "" || sn.DiskStrategy == "" || sn.DiskBytes == 0 {
		t.Fatalf("the snapshot records no fork facts: %+v", sn)
	}
	before, _ := e.svc.ListVMs(ctx)
	entries, _ := os.ReadDir(e.svc.layout.VMsDir())
	for _, c := range []struct {
		req  api.CreateVMRequest
		is   error
		want string
	}{
		{api.CreateVMRequest{Name: "f", From: "s1", VCPUs: 3}, errdefs.ErrInvalidArgument, "vcpus"},
		{api.CreateVMRequest{Name: "f", From: "s1", MemoryMiB: 4096}, errdefs.ErrInvalidArgument, "memory"},
		{api.CreateVMRequest{Name: "f", From: "s1", DiskStrategy: "qcow2-no"}, errdefs.ErrInvalidArgument, "disk strategy"},
		{api.CreateVMRequest{Name: "f", From: "nope"}, errdefs.ErrNotFound, "nope"},
		{api.CreateVMRequest{Name: "f", From: "s1"}, errdefs.ErrFailedPrecondition, "banger-agent"},
	} {
		_, err := e.svc.CreateVM(ctx, c.req)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %v naming %q", c.req, err, c.is, c.want)
		}
	}
	if _, err := e.svc.ForkVM(ctx, "web", api.ForkVMRequest{Name: "f"}); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "banger-agent") {
		t.Errorf("vm fork of a vm without an agent: %v", err)
	}
	after, _ := e.svc.ListVMs(ctx)
	entriesAfter, _ := os.ReadDir(e.svc.layout.VMsDir())
	sns, _ := e.svc.ListSnapshots(ctx)
	if len(after) != len(before) || len(entriesAfter) != len(entries) || len(sns) != 1 {
		t.Fatalf("a refused fork left something: %d vms (was %d), %d dirs (was %d), %d snapshots", len(after), len(before), len(entriesAfter), len(entries), len(sns))
	}
}

// TestDefaultNameFits: a default snapshot name made from a VM's or an
// image's name of the longest length is still a valid name.
func TestDefaultNameFits(t *testing.T) {
	long := strings.Repeat("a", maxNameLen-2) + "-b"
	for _, c := range []struct{ prefix, suffix string }{
		{long, "-20261129-210000"},
		{"warm-" + long, "-qemu-2c-512m-20261129-210000"},
		{"web", "-20261129-210000"},
		{strings.Repeat("a", maxNameLen-17) + "-", "-20261129-210000"},
	} {
		n := defaultName(c.prefix, c.suffix)
		if err := ValidateName("snapshot", n); err != nil || !strings.HasSuffix(n, c.suffix) {
			t.Errorf("%q + %q: %q: %v", c.prefix, c.suffix, n, err)
		}
	}
	if n := defaultName("web", "-x"); n != "web-x" {
		t.Errorf("a short name was changed: %q", n)
	}
}
