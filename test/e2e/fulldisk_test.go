package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// sh runs each command, failing the test on the first error.
func sh(t *testing.T, cmds ...[]string) {
	t.Helper()
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
}

// fillDir fills the filesystem of dir to its last block and returns the
// filler's path (removed by t.Cleanup). dd alone leaves some room on ext4
// (blocks it reserved for delayed allocation come back once written), so
// after it the rest is taken 4 KiB at a time with fallocate, after each
// sync, until a round finds nothing more.
func fillDir(t *testing.T, dir string) string {
	t.Helper()
	filler := filepath.Join(dir, "filler")
	t.Cleanup(func() { os.Remove(filler); os.Remove(filler + ".2") })
	out, _ := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=1M").CombinedOutput()
	if !strings.Contains(string(out), "No space left") {
		t.Fatalf("the filesystem of %s did not fill: %s", dir, out)
	}
	f, err := os.OpenFile(filler+".2", os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var off int64
	for round := 0; round < 10; round++ {
		sh(t, []string{"sync", "-f", dir})
		took := int64(0)
		for unix.Fallocate(int(f.Fd()), 0, off, 4096) == nil {
			off += 4096
			took += 4096
		}
		if took == 0 {
			return filler
		}
	}
	t.Fatalf("the filesystem of %s kept freeing space", dir)
	return ""
}

// vmLeftovers lists what a VM that is not running must not have: VMM or
// log forwarder processes, runtime files named after it, a tap, a
// publish rule.
func (d *daemon) vmLeftovers(id string) []string {
	var out []string
	out = append(out, d.vmmProcesses()...)
	entries, _ := os.ReadDir(d.runDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), id[:8]) {
			out = append(out, "runtime file "+e.Name())
		}
	}
	if links, _ := exec.Command("ip", "-n", d.netns, "-o", "link", "show").CombinedOutput(); strings.Contains(string(links), "tap-fc-") {
		out = append(out, "tap:\n"+string(links))
	}
	if rules, err := exec.Command("ip", "netns", "exec", d.netns, "nft", "list", "chain", "inet", "banger", "publish").CombinedOutput(); err == nil && strings.Contains(string(rules), "dnat") {
		out = append(out, "publish rule:\n"+string(rules))
	}
	return out
}

// TestStartWithoutLogRoomFailsAndRollsBack: a start whose VM log has no
// room fails out of space (exit 8) naming the log, and is rolled back:
// no VMM, no log forwarder, no tap, no publish rule. Only the log is full
// (a file of a full 1 MiB tmpfs bind-mounted over vm.log in the daemon's
// mount namespace), so it is the
// log check that fails the start, not a database write. Once the log has
// room again, the VM starts.
func TestStartWithoutLogRoomFailsAndRollsBack(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	v := d.createVM("nolog", "--publish", "18080:80")

	// The daemon runs in its own mount namespace (ip netns exec): mount
	// there.
	ns := func(args ...string) []string {
		return append([]string{"nsenter", "-t", itoa(d.proc.cmd.Process.Pid), "-m", "--"}, args...)
	}
	small := t.TempDir()
	full := filepath.Join(small, "vm.log")
	if err := os.WriteFile(v.LogPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sh(t, ns("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", small))
	t.Cleanup(func() { _ = exec.Command("nsenter", ns("umount", "-l", small)[1:]...).Run() })
	sh(t, ns("sh", "-c", `echo "an earlier boot" > "$1" && mount --bind "$1" "$2"`, "sh", full, v.LogPath))
	mounted := true
	unmount := func() {
		if mounted {
			if out, err := exec.Command("nsenter", ns("umount", v.LogPath)[1:]...).CombinedOutput(); err != nil {
				t.Errorf("unmount %s: %v %s", v.LogPath, err, out)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount) // before the harness deletes the VM
	if out, _ := exec.Command("nsenter", ns("dd", "if=/dev/zero", "of="+filepath.Join(small, "filler"), "bs=64k")[1:]...).CombinedOutput(); !strings.Contains(string(out), "No space left") {
		t.Fatalf("the log's filesystem did not fill: %s", out)
	}

	stderr := d.fails(8, "vm", "start", "nolog")
	t.Logf("start with a full log: %s", strings.TrimSpace(stderr))
	if !strings.Contains(stderr, v.LogPath) || !strings.Contains(stderr, "no room") {
		t.Errorf("the error does not name the log and its lack of room: %s", stderr)
	}
	got := d.show("nolog")
	if got.State == "running" || got.Runtime.PID != 0 || got.Runtime.Tap != "" {
		t.Errorf("after the failed start: state %s, runtime %+v", got.State, got.Runtime)
	}
	if op := got.LastOperation; op == nil || op.Kind != "vm.start" || op.Status != "failed" {
		t.Errorf("last operation %+v, want a failed vm.start", op)
	}
	if left := d.vmLeftovers(v.ID); len(left) > 0 {
		t.Errorf("a failed start left:\n%s", strings.Join(left, "\n"))
	}

	unmount()
	d.must("vm", "start", "nolog")
	d.waitLog("nolog", testimage.BootLine(1), 1, bootTimeout)
	d.must("vm", "stop", "--timeout", "10s", "nolog")
}

// TestFullStateDisk runs the daemon on a small loop-mounted ext4 state
// dir, boots a VM, fills the filesystem, and checks that a start fails out
// of space leaving nothing, that stop and delete still work and are
// recorded, and that the daemon restarts; and that the state dir's reserve
// is kept (0600, its size allocated) and re-created once space is back.
func TestFullStateDisk(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "state")
	sh(t, []string{"truncate", "-s", "320M", img},
		[]string{"mkfs.ext4", "-q", "-F", img},
		[]string{"mkdir", "-p", mnt},
		[]string{"mount", "-o", "loop", img, mnt})
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-d", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	d := startDaemon(t, "--vm-log-cap", "64KiB")
	// The harness's state dir, on the small filesystem: restart on it.
	d.stop()
	os.RemoveAll(d.stateDir)
	if err := os.Symlink(mnt, d.stateDir); err != nil {
		t.Fatal(err)
	}
	d.start()
	reserve := filepath.Join(mnt, "reserve")
	checkReserve := func(when string) {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(reserve, &st); err != nil {
			t.Fatalf("%s: no reserve: %v", when, err)
		}
		if st.Mode&0o777 != 0o600 || st.Size < 1<<20 || st.Blocks*512 < st.Size {
			t.Fatalf("%s: reserve mode %04o, size %d, %d bytes allocated", when, st.Mode&0o777, st.Size, st.Blocks*512)
		}
	}
	checkReserve("at start")
	d.importTestImage()
	d.createVM("full")
	idle := d.createVM("idle")
	d.must("vm", "start", "full")
	d.waitLog("full", testimage.BootLine(1), 1, bootTimeout)
	running := len(d.vmmProcesses()) // its VMM and log forwarder

	filler := fillDir(t, mnt)
	df, _ := exec.Command("df", "-k", mnt).CombinedOutput()
	t.Logf("full:\n%s", df)

	stderr := d.fails(8, "vm", "start", "idle")
	t.Logf("start on a full disk: %s", strings.TrimSpace(stderr))
	if n := len(d.vmmProcesses()); n != running {
		t.Errorf("%d vmm and forwarder processes after a failed start, want %d:\n%s", n, running, strings.Join(d.vmmProcesses(), "\n"))
	}
	if s := d.show("idle"); s.State == "running" || s.Runtime.PID != 0 {
		t.Errorf("idle after a failed start: %s %+v", s.State, s.Runtime)
	}
	entries, _ := os.ReadDir(d.runDir)
	for _, e := range entries {
		if strings.Contains(e.Name(), idle.ID[:8]) {
			t.Errorf("a failed start left %s", e.Name())
		}
	}

	began := time.Now()
	if r, err := d.run("vm", "stop", "--timeout", "10s", "full"); err != nil {
		t.Errorf("stop on a full disk: %v (exit %d)", err, r.code)
	} else {
		t.Logf("stop on a full disk: ok in %s", time.Since(began).Round(time.Millisecond))
	}
	if s := d.show("full"); s.State != "stopped" || s.LastOperation == nil || s.LastOperation.Kind != "vm.stop" || s.LastOperation.Status != "done" {
		t.Errorf("after the stop: state %s, last operation %+v", s.State, s.LastOperation)
	}
	d.stop()
	began = time.Now()
	d.start()
	t.Logf("daemon restarted on a full disk in %s", time.Since(began).Round(time.Millisecond))
	if r, err := d.run("vm", "delete", "full"); err != nil {
		t.Errorf("delete on a full disk: %v (exit %d)", err, r.code)
	}
	logb, _ := os.ReadFile(d.logFile)
	t.Logf("reserve released while full: %v", strings.Contains(string(logb), "released its reserve"))

	os.Remove(filler)
	os.Remove(filler + ".2")
	d.must("vm", "delete", "idle") // a write: the reserve comes back
	checkReserve("once space is back")
	// Leave the harness a plain dir for its leak checks.
	d.stop()
	os.Remove(d.stateDir)
	os.MkdirAll(d.stateDir, 0o700)
	d.start()
}
