package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/logcap"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
)

// TestMain lets the test binary act as `banger _logpipe ... -- VMM ARGS`
// when spawnSupervised re-executes it (/proc/self/exe).
func TestMain(m *testing.M) {
	if len(os.Args) > 8 && os.Args[1] == logcap.ForwarderCommand && os.Args[2] == "--cap" && os.Args[4] == "--exit-file" && os.Args[7] == "--" {
		limit, err := strconv.ParseInt(os.Args[3], 10, 64)
		if err == nil {
			err = Supervise(SuperviseConfig{LogPath: os.Args[6], LogCap: limit, ExitFile: os.Args[5], Path: os.Args[8], Args: os.Args[9:],
				Ack: os.NewFile(AckFD, "ack")}, os.NewFile(logcap.ReadyFD, "ready"))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeVMM is a shell VMM that prints a line, waits until the file go
// exists, prints another and exits with code.
func fakeVMM(goFile string, code int) []string {
	return []string{"-c", `echo "vmm up"; while [ ! -e "$1" ]; do sleep 0.02; done; echo "vmm down" >&2; exit "$2"`, "sh", goFile, strconv.Itoa(code)}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 3000; i++ {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still runs after 30 s", pid)
}

// TestSupervisedExitIsRecorded: a supervised VMM is the supervisor's child,
// not ours; its exit reaches OnExit while we live, and the exit file, which
// a restarted daemon reads, names that very process (pid and start time),
// mode 0600.
func TestSupervisedExitIsRecorded(t *testing.T) {
	dir := t.TempDir()
	goFile, logPath := filepath.Join(dir, "go"), filepath.Join(dir, "vm.log")
	exits := make(chan Exit, 1)
	p, err := Spawn("/bin/sh", fakeVMM(goFile, 3), SpawnOptions{LogPath: logPath, LogCap: 64 << 10, ExitFile: ExitFile(dir), OnExit: func(e Exit) { exits <- e }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(p.PID, syscall.SIGKILL) })
	st, err := system.ReadProcStat(p.PID)
	if err != nil || st.StartTime != p.StartTime {
		t.Fatalf("the recorded start time %d is not the process's (%+v, %v)", p.StartTime, st, err)
	}
	ppid := parentOf(t, p.PID)
	if ppid == os.Getpid() {
		t.Fatal("the vmm is the daemon's child, not its supervisor's")
	}
	if sid, _ := unix.Getsid(ppid); sid != ppid {
		t.Fatalf("the supervisor %d is not in its own session (%d): it would not outlive the daemon", ppid, sid)
	}
	if _, ok := ReadExitFile(dir, p.PID, p.StartTime); ok {
		t.Fatal("an exit is recorded while the vmm runs")
	}
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e := <-exits
	if e.Code != 3 || e.Signal != 0 || e.PID != p.PID {
		t.Fatalf("OnExit heard %+v, want code 3 of pid %d", e, p.PID)
	}
	waitGone(t, ppid)
	fe, ok := ReadExitFile(dir, p.PID, p.StartTime)
	if !ok || fe.Code != 3 || fe.Signal != 0 || !fe.At.Equal(e.At) {
		t.Fatalf("exit file: %+v %v, want %+v", fe, ok, e)
	}
	if _, ok := ReadExitFile(dir, p.PID, p.StartTime+1); ok {
		t.Fatal("the exit file was taken for another process (other start time)")
	}
	info, err := os.Stat(ExitFile(dir))
	if err != nil || info.Mode().Perm() != ExitFileMode {
		t.Fatalf("exit file %v, %v; want mode %04o", info, err, ExitFileMode)
	}
	b, _ := os.ReadFile(logPath)
	if string(b) != "vmm up\nvmm down\n" {
		t.Fatalf("log %q", b)
	}
}

// TestSupervisedKillIsRecorded: a VMM killed by a signal while nobody
// listens (the daemon gone) is recorded as such in the exit file.
func TestSupervisedKillIsRecorded(t *testing.T) {
	dir := t.TempDir()
	p, err := Spawn("/bin/sh", fakeVMM(filepath.Join(dir, "go"), 0), SpawnOptions{LogPath: filepath.Join(dir, "vm.log"), LogCap: 64 << 10, ExitFile: ExitFile(dir)})
	if err != nil {
		t.Fatal(err)
	}
	ppid := parentOf(t, p.PID)
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ppid)
	e, ok := ReadExitFile(dir, p.PID, p.StartTime)
	if !ok || e.Signal != syscall.SIGKILL || e.Code != -1 {
		t.Fatalf("exit file: %+v %v, want killed by KILL", e, ok)
	}
}

// TestSupervisedFullLogFails: no vmm is started when its log has no room;
// the error is out_of_space naming the log; no supervisor is left.
func TestSupervisedFullLogFails(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Fatalf("mount a 1 MiB tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 64<<10)); err != nil {
			break
		}
	}
	f.Close()
	started := filepath.Join(t.TempDir(), "started")
	logPath := filepath.Join(dir, "vm.log")
	_, err = Spawn("/bin/sh", []string{"-c", `touch "$1"; sleep 60`, "sh", started}, SpawnOptions{LogPath: logPath, LogCap: 16 << 20, ExitFile: ExitFile(t.TempDir())})
	if err == nil || errdefs.ClassOf(err) != errdefs.ClassOutOfSpace || !strings.Contains(err.Error(), logPath) {
		t.Fatalf("spawn with a full log: %v (class %s), want out_of_space naming %s", err, errdefs.ClassOf(err), logPath)
	}
	if _, serr := os.Stat(started); serr == nil {
		t.Fatal("the vmm was started although its log has no room")
	}
	if kids := childrenOf(t, os.Getpid()); len(kids) > 0 {
		t.Fatalf("processes left after a failed spawn: %v", kids)
	}
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// childrenOf lists the live (not zombie) children of pid.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		if pp, _ := strconv.Atoi(f[1]); pp == pid && f[0] != "Z" {
			out = append(out, n)
		}
	}
	return out
}

// TestSupervisorKillsAVMMNobodyRecorded: until the daemon has recorded the
// new VMM (OnStarted) and said so, the supervisor holds it; a daemon that
// dies or fails to record it leaves no owner, so the supervisor kills it
// and says so in the log.
func TestSupervisorKillsAVMMNobodyRecorded(t *testing.T) {
	dir := t.TempDir()
	goFile, logPath := filepath.Join(dir, "go"), filepath.Join(dir, "vm.log")
	var started Process
	_, err := Spawn("/bin/sh", fakeVMM(goFile, 0), SpawnOptions{LogPath: logPath, LogCap: 64 << 10, ExitFile: ExitFile(dir),
		OnStarted: func(p Process) error { started = p; return errors.New("the store is gone") }})
	if err == nil || !strings.Contains(err.Error(), "the store is gone") {
		t.Fatalf("spawn with a failed record: %v", err)
	}
	if started.PID == 0 {
		t.Fatal("OnStarted did not see the vmm")
	}
	waitGone(t, started.PID)
	for i := 0; ; i++ {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "the daemon did not record this vmm") {
			break
		}
		if i > 500 {
			t.Fatalf("the log does not say why the vmm was killed:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
