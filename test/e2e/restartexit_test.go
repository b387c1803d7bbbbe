package e2e

import (
	"bufio"
	"encoding/json"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// qmpQuit asks QEMU to quit through its QMP socket: QEMU exits with code
// 0, as when its guest powers off.
func qmpQuit(t *testing.T, sock string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("qmp %s: %v", sock, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // the greeting
		t.Fatal(err)
	}
	for _, cmd := range []string{"qmp_capabilities", "quit"} {
		b, _ := json.Marshal(map[string]string{"execute": cmd})
		if _, err := c.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		for { // skip events up to the answer
			line, err := r.ReadString('\n')
			if err != nil {
				if cmd == "quit" {
					return // it closed the socket as it quit
				}
				t.Fatal(err)
			}
			if strings.Contains(line, `"return"`) {
				break
			}
			if strings.Contains(line, `"error"`) {
				t.Fatalf("qmp %s: %s", cmd, line)
			}
		}
	}
}

// waitDead waits until pid has exited (and been reaped by its parent).
func waitDead(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 600; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("vmm %d still there 30 s later", pid)
}

// TestVMMExitStatusSurvivesADaemonRestart: a VMM's exit status is known
// although the daemon that started it is gone (its supervisor writes it in
// the VM dir). A VMM killed while the daemon is down is recorded error,
// signal KILL, at the next start; a re-adopted VMM that then exits with
// code 0 (QMP quit: what a guest power-off gives) is a clean stop.
// Before: both were "status unknown", recorded error.
func TestVMMExitStatusSurvivesADaemonRestart(t *testing.T) {
	requireE2E(t)
	if vmmKind() != "qemu" {
		t.Skip("quits the vmm through qmp (a qemu control socket)")
	}
	d := startDaemon(t)
	d.importTestImage()
	d.createVM("r1")

	// 1. Killed while the daemon is down.
	d.must("vm", "start", "r1")
	d.waitLog("r1", testimage.BootLine(1), 1, bootTimeout)
	pid := d.show("r1").Runtime.PID
	d.stop()
	if !alive(pid) {
		t.Fatal("the vmm died with the daemon")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, pid)
	d.start()
	v := d.show("r1")
	t.Logf("killed while the daemon was down: %s, %s", v.State, v.LastError)
	if v.State != "error" || v.LastExit == nil || !v.LastExit.Known || v.LastExit.Signal != "KILL" {
		t.Fatalf("after a kill while the daemon was down: state %s, last exit %+v; want error, signal KILL, known", v.State, v.LastExit)
	}
	if v.Runtime.PID != 0 {
		t.Fatalf("runtime still recorded: %+v", v.Runtime)
	}

	// 2. Re-adopted, then exits with code 0.
	d.must("vm", "start", "r1")
	d.waitLog("r1", testimage.BootLine(2), 1, bootTimeout)
	v = d.show("r1")
	pid = v.Runtime.PID
	d.stop()
	d.start()
	if v2 := d.show("r1"); v2.State != "running" || v2.Runtime.PID != pid {
		t.Fatalf("not re-adopted: %s pid %d (was %d)", v2.State, v2.Runtime.PID, pid)
	}
	qmpQuit(t, v.Runtime.ControlSocket)
	got, took := d.waitExited("r1")
	t.Logf("a re-adopted vmm's clean exit: %s after %s, %s", got.State, took.Round(time.Millisecond), got.LastError)
	if got.State != "stopped" || got.LastExit == nil || !got.LastExit.Known || got.LastExit.Code != 0 || got.LastExit.Signal != "" {
		t.Fatalf("after a re-adopted vmm exited with code 0: state %s, last exit %+v; want stopped, code 0, known", got.State, got.LastExit)
	}
}
