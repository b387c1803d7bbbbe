package system

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestProcessIdentityAndSignals(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	pid := cmd.Process.Pid
	st, err := ReadProcStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(pid, st.StartTime) {
		t.Fatal("a running process must be alive")
	}
	if Alive(pid, st.StartTime+1) {
		t.Fatal("a different start time must not match: the pid could have been reused")
	}
	// A signal aimed at the wrong incarnation is not sent.
	if err := Signal(pid, st.StartTime+1, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if WaitExit(context.Background(), pid, st.StartTime, 100*time.Millisecond) {
		t.Fatal("process exited although no signal was due")
	}
	if err := Signal(pid, st.StartTime, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !WaitExit(context.Background(), pid, st.StartTime, 5*time.Second) {
		t.Fatal("process did not exit after SIGTERM")
	}
	<-done
	if Alive(pid, st.StartTime) {
		t.Fatal("a reaped process must not be alive")
	}
	if err := Signal(pid, st.StartTime, syscall.SIGKILL); err != nil {
		t.Fatalf("signalling a gone process must not fail: %v", err)
	}
}

func TestAliveSelfAndBadPid(t *testing.T) {
	if !Alive(os.Getpid(), 0) {
		t.Fatal("own process must be alive")
	}
	if Alive(0, 0) || Alive(-1, 0) {
		t.Fatal("non-positive pids are never alive")
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"": syscall.SIGTERM, "TERM": syscall.SIGTERM, "sigkill": syscall.SIGKILL,
		"INT": syscall.SIGINT, "9": syscall.SIGKILL, "SIGHUP": syscall.SIGHUP,
	} {
		got, err := ParseSignal(in)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"BOGUS", "SIGFOO", "0", "-3", "999", "TERM;rm"} {
		if _, err := ParseSignal(bad); err == nil {
			t.Errorf("ParseSignal(%q) accepted an unknown signal", bad)
		}
	}
}

func TestKillKillsOnlyTheSameProcessAndWaits(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	waited := make(chan *os.ProcessState, 1)
	go func() { _ = cmd.Wait(); waited <- cmd.ProcessState }()
	pid := cmd.Process.Pid
	st, err := ReadProcStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	// Another incarnation of the pid is left alone, and that is no error.
	if err := Kill(context.Background(), pid, st.StartTime+1, time.Second); err != nil {
		t.Fatalf("Kill of a recycled pid: %v", err)
	}
	if !Alive(pid, st.StartTime) {
		t.Fatal("Kill signalled a process with another start time")
	}
	if err := Kill(context.Background(), pid, st.StartTime, 10*time.Second); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	// Kill returned only once the process was gone, killed by SIGKILL.
	if Alive(pid, st.StartTime) {
		t.Fatal("Kill returned while the process was still alive")
	}
	ps := <-waited
	if ws, ok := ps.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("process ended with %v, want killed by SIGKILL", ps)
	}
	// Killing what is gone is not an error; nor is pid 0 (nothing recorded).
	if err := Kill(context.Background(), pid, st.StartTime, time.Second); err != nil {
		t.Fatalf("Kill of a gone process: %v", err)
	}
	if err := Kill(context.Background(), 0, 0, time.Second); err != nil {
		t.Fatalf("Kill of pid 0: %v", err)
	}
}
