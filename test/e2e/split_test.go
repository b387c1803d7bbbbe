package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// TestUpgradedDaemonAdoptsVMs: a daemon installed over the one that
// started a VM (another bangerd file; the old one deleted, as a package
// upgrade does) adopts it, though its supervisor runs the old binary's
// hidden `_logpipe`: adoption goes by the VMM's pid and start time and the
// exit file, never by a command line or an executable. (VMs started by a
// banger from before bangerd have `banger _logpipe` supervisors: the same.)
func TestUpgradedDaemonAdoptsVMs(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.stop()
	oldBin, newBin := installCopy(t, d.bin), installCopy(t, d.bin)
	harness := d.bin
	t.Cleanup(func() { d.bin = harness }) // before the copies go: the daemon's cleanup runs the CLI
	d.bin = oldBin
	d.start()
	d.importTestImage()
	d.createVM("kept")
	d.must("vm", "start", "kept")
	d.waitLog("kept", testimage.BootLine(1), 1, bootTimeout)
	pid := d.show("kept").Runtime.PID
	supervisor := parentOf(t, pid)
	oldDaemon := filepath.Join(filepath.Dir(oldBin), "bangerd")
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", supervisor)); exe != oldDaemon {
		t.Fatalf("vmm %d's parent %d runs %q, want the old %s", pid, supervisor, exe, oldDaemon)
	}

	d.stop()
	if err := os.RemoveAll(filepath.Dir(oldBin)); err != nil {
		t.Fatal(err)
	}
	d.bin = newBin
	d.start()
	newDaemon := filepath.Join(filepath.Dir(newBin), "bangerd")
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", d.proc.cmd.Process.Pid)); exe != newDaemon {
		t.Fatalf("the daemon runs %q, want %s (banger daemon execs the bangerd next to it)", exe, newDaemon)
	}
	v := d.show("kept")
	if v.State != "running" || v.Runtime.PID != pid {
		t.Fatalf("not adopted by the new daemon: %s pid %d (was %d)", v.State, v.Runtime.PID, pid)
	}
	d.must("vm", "stop", "kept")
	d.waitLog("kept", testimage.ShutdownMarker, 1, 5*time.Second)
	if _, stages := stageNames(d, "kept"); stages["wait_for_exit"] != "done" {
		t.Fatalf("the adopted vm did not stop gracefully: %v", stages)
	}
	v = d.show("kept")
	if v.State != "stopped" || alive(pid) {
		t.Fatalf("after stop: %s, vmm alive %v", v.State, alive(pid))
	}
	for i := 0; i < 50 && alive(supervisor); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(supervisor) {
		t.Fatalf("the old supervisor %d outlived its vmm", supervisor)
	}
}

// installCopy copies banger and bangerd (next to bin) into a directory of
// their own, removed at the end of the test; it returns the new banger.
func installCopy(t *testing.T, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgr-install-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, name := range []string{"banger", "bangerd"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(bin), name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "banger")
}

// parentOf is pid's parent process.
func parentOf(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := bytes.Fields(stat[bytes.LastIndexByte(stat, ')')+1:])
	ppid, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		t.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return ppid
}
