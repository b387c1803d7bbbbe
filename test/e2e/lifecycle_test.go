package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// bootTimeout bounds every boot: TCG guests here reach their marker in a
// few seconds; a hang must fail the test, not stall it.
const bootTimeout = 90 * time.Second

func stageNames(d *daemon, ref string) (kind string, stages map[string]string) {
	ops := d.ops(ref)
	if len(ops) == 0 {
		d.t.Fatalf("no operations for %s", ref)
	}
	stages = map[string]string{}
	for _, st := range ops[0].Stages {
		stages[st.Name] = st.Status
	}
	return ops[0].Kind, stages
}

func TestLifecycle(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()

	v := d.createVM("life")
	if v.State != "stopped" {
		t.Fatalf("created vm is %s", v.State)
	}
	disk := filepath.Join(v.VMDir, diskFile(v))

	// start: the guest boots and prints its marker.
	d.must("vm", "start", "life")
	d.waitLog("life", testimage.BootLine(1), 1, bootTimeout)
	v = d.show("life")
	if v.State != "running" || v.Runtime.PID == 0 || !alive(v.Runtime.PID) {
		t.Fatalf("show after start: state %s pid %d", v.State, v.Runtime.PID)
	}
	cmdline, _ := os.ReadFile("/proc/" + itoa(v.Runtime.PID) + "/cmdline")
	if !strings.Contains(string(cmdline), vmmKind()) {
		t.Fatalf("pid %d is not a %s process: %q", v.Runtime.PID, vmmKind(), cmdline)
	}
	if v.LastOperation == nil || v.LastOperation.Kind != "vm.start" || v.LastOperation.Status != "done" {
		t.Fatalf("last operation %+v", v.LastOperation)
	}

	// start again: nothing happens.
	again := d.show("life")
	d.must("vm", "start", "life")
	if pid := d.show("life").Runtime.PID; pid != again.Runtime.PID {
		t.Fatalf("second start replaced pid %d with %d", again.Runtime.PID, pid)
	}

	// stop: graceful, proven by the guest's own shutdown marker and by the
	// journal: the VMM exited by itself and was not killed.
	pid := v.Runtime.PID
	d.must("vm", "stop", "life")
	logs := d.waitLog("life", testimage.ShutdownMarker, 1, 5*time.Second)
	kind, stages := stageNames(d, "life")
	if kind != "vm.stop" || stages["wait_for_exit"] != "done" {
		t.Fatalf("stop journal %s %v", kind, stages)
	}
	if _, killed := stages["kill_running_vm"]; killed {
		t.Fatalf("the VMM was killed on a graceful stop: %v", stages)
	}
	if _, timedOut := stages["graceful_shutdown_timeout"]; timedOut {
		t.Fatalf("graceful stop timed out: %v", stages)
	}
	if alive(pid) {
		t.Fatal("VMM still alive after stop")
	}
	if strings.Index(logs, testimage.ShutdownMarker) < strings.Index(logs, testimage.BootLine(1)) {
		t.Fatal("shutdown marker precedes the boot marker")
	}
	if v := d.show("life"); v.State != "stopped" || v.Runtime.PID != 0 {
		t.Fatalf("after stop: %s pid %d", v.State, v.Runtime.PID)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("stop removed the disk: %v", err)
	}

	// start again: the counter written by the first boot is still there.
	d.must("vm", "start", "life")
	d.waitLog("life", testimage.BootLine(2), 1, bootTimeout)

	// kill: default TERM.
	pid = d.show("life").Runtime.PID
	d.must("vm", "kill", "life")
	if alive(pid) {
		t.Fatal("VMM alive after kill")
	}
	if kind, stages := stageNames(d, "life"); kind != "vm.kill" || stages["send_signal"] != "done" {
		t.Fatalf("kill journal %s %v", kind, stages)
	}
	if v := d.show("life"); v.State != "stopped" {
		t.Fatalf("after kill: %s", v.State)
	}

	// restart from stopped, then restart while running (graceful stop + start).
	d.must("vm", "restart", "life")
	d.waitLog("life", testimage.BootLine(3), 1, bootTimeout)
	pid = d.show("life").Runtime.PID
	d.must("vm", "restart", "life")
	d.waitLog("life", testimage.BootLine(4), 1, bootTimeout)
	if v := d.show("life"); v.State != "running" || v.Runtime.PID == pid || alive(pid) {
		t.Fatalf("restart kept the old VMM: old %d new %d", pid, v.Runtime.PID)
	}
	if n := strings.Count(d.must("vm", "logs", "life"), testimage.ShutdownMarker); n != 2 {
		t.Fatalf("%d shutdown markers, want 2 (restart of a running vm is graceful)", n)
	}

	// delete: record, dir, disk and process gone.
	pid = d.show("life").Runtime.PID
	d.must("vm", "delete", "life")
	d.fails(3, "vm", "show", "life")
	if alive(pid) {
		t.Fatal("VMM alive after delete")
	}
	for _, p := range []string{disk, v.VMDir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s survived delete", p)
		}
	}
	if p := d.vmmProcesses(); len(p) > 0 {
		t.Fatalf("VMM processes after delete: %v", p)
	}
}

func TestFailedStartIsRecordedAndLeaksNothing(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	d.createVM("broken")
	var im struct {
		KernelPath string `json:"kernel_path"`
	}
	mustJSON(t, d.must("image", "show", "default", "-o", "json"), &im)
	if err := os.Remove(im.KernelPath); err != nil {
		t.Fatal(err)
	}
	stderr := d.fails(5, "vm", "start", "broken")
	v := d.show("broken")
	if v.State != "error" || !strings.Contains(v.LastError, im.KernelPath) || !strings.Contains(v.LastError, v.LogPath) {
		t.Fatalf("vm show after a failed start: state %s, last error %q", v.State, v.LastError)
	}
	if !strings.Contains(stderr, v.LogPath) {
		t.Fatalf("the error the user sees does not name the log: %s", stderr)
	}
	if v.Runtime.PID != 0 || v.Runtime.ControlSocket != "" {
		t.Fatalf("runtime not cleared: %+v", v.Runtime)
	}
	if p := d.vmmProcesses(); len(p) > 0 {
		t.Fatalf("a failed start left VMM processes: %v", p)
	}
	if entries, _ := os.ReadDir(d.runDir); len(entries) != 1 {
		t.Fatalf("runtime dir holds more than the control socket: %v", entries)
	}
}

func TestDaemonRestartKeepsVMRunning(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	d.createVM("survivor")
	d.must("vm", "start", "survivor")
	d.waitLog("survivor", testimage.BootLine(1), 1, bootTimeout)
	pid := d.show("survivor").Runtime.PID

	d.stop()
	time.Sleep(500 * time.Millisecond)
	if !alive(pid) {
		t.Fatal("the VM died with the daemon")
	}
	d.start()
	v := d.show("survivor")
	if v.State != "running" || v.Runtime.PID != pid {
		t.Fatalf("not re-adopted: %s pid %d (was %d)", v.State, v.Runtime.PID, pid)
	}
	d.must("vm", "stop", "survivor")
	d.waitLog("survivor", testimage.ShutdownMarker, 1, 5*time.Second)
	if _, stages := stageNames(d, "survivor"); stages["wait_for_exit"] != "done" {
		t.Fatalf("re-adopted vm did not stop gracefully: %v", stages)
	}
	if alive(pid) {
		t.Fatal("VMM alive after stop")
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	d.createVM("taken")
	cases := []struct {
		code int
		args []string
	}{
		{2, []string{"vm", "create", ""}},
		{2, []string{"vm", "create", strings.Repeat("x", 64)}},
		{2, []string{"vm", "create", "../x"}},
		{2, []string{"vm", "create", "a/b"}},
		{4, []string{"vm", "create", "taken"}},
		{2, []string{"vm", "create", "c0", "--cpus", "0"}},
		{2, []string{"vm", "create", "c1", "--cpus", "-1"}},
		{2, []string{"vm", "create", "c2", "--cpus", "100000"}},
		{2, []string{"vm", "create", "m0", "--memory", "0"}},
		{2, []string{"vm", "create", "m1", "--memory", "-1G"}},
		{2, []string{"vm", "create", "m2", "--memory", "64T"}},
		{3, []string{"vm", "create", "i0", "--image", "no-such-image"}},
		{3, []string{"vm", "start", "no-such-vm"}},
		{3, []string{"vm", "delete", "no-such-vm"}},
		{2, []string{"vm", "kill", "taken", "--signal", "BOGUS"}},
		{2, []string{"image", "import", "../bad", "--kernel", "/etc/hostname", "--rootfs", "/etc/hostname"}},
		{2, []string{"image", "import", "notext4", "--kernel", testImage(t).Kernel, "--rootfs", "/etc/hostname"}},
		{5, []string{"image", "delete", "default"}},
		{2, []string{"vm", "create", "p0", "--publish", "80"}},
		{2, []string{"vm", "create", "p1", "--publish", "70000:80"}},
		{2, []string{"vm", "create", "p2", "--publish", "8080:80/sctp"}},
		{2, []string{"vm", "create", "p3", "--publish", "abc:80"}},
		{2, []string{"vm", "cp", "/etc/hostname", "/tmp/banger-e2e-nowhere"}},
		{2, []string{"vm", "cp", "taken:relative/path", "/tmp/x"}},
	}
	for _, c := range cases {
		stderr := d.fails(c.code, c.args...)
		if !strings.HasPrefix(stderr, "banger: ") || len(strings.TrimSpace(stderr)) < 20 {
			t.Errorf("%v: unclear error %q", c.args, stderr)
		}
	}
	vms := d.listVMs()
	if len(vms) != 1 || vms[0].Name != "taken" || vms[0].State != "stopped" {
		t.Fatalf("bad input changed the vms: %+v", vms)
	}
	entries, _ := os.ReadDir(filepath.Join(d.stateDir, "vms"))
	images, _ := os.ReadDir(filepath.Join(d.stateDir, "images"))
	if len(entries) != 1 || len(images) != 1 {
		t.Fatalf("bad input left files: %d vm dirs, %d image dirs", len(entries), len(images))
	}
}

// TestZeroPoolRefused: a guest network with no room for a guest stops the
// daemon at start, with a clear error, before it changes anything.
func TestZeroPoolRefused(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	ns := "bgr-zero-" + itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	defer exec.Command("ip", "netns", "delete", ns).Run()
	out, err := exec.Command("ip", "netns", "exec", ns, bangerBinary(t), "daemon", "--state-dir", filepath.Join(dir, "s"),
		"--runtime-dir", filepath.Join(dir, "r"), "--guest-cidr", "10.9.9.0/31").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "no room for guests") {
		t.Fatalf("daemon with a /31 pool: %v\n%s", err, out)
	}
	links, _ := exec.Command("ip", "-n", ns, "-o", "link", "show").CombinedOutput()
	if strings.Contains(string(links), "banger0") {
		t.Fatalf("the refused daemon created its bridge:\n%s", links)
	}
}

// TestELFKernelImage imports the test guest with its ELF vmlinux (what
// Firecracker boots): the image records it for both drivers, and QEMU
// boots it through its PVH entry.
func TestELFKernelImage(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	im := testImage(t)
	d.must("image", "import", "elf", "--kernel", im.Vmlinux, "--initrd", im.Initrd, "--rootfs", im.Rootfs)
	var got struct {
		KernelPath string `json:"kernel_path"`
	}
	mustJSON(t, d.must("image", "show", "elf", "-o", "json"), &got)
	if !strings.HasSuffix(got.KernelPath, "/vmlinux") {
		t.Fatalf("an ELF kernel was recorded as %s", got.KernelPath)
	}
	d.createVM("elf", "--image", "elf")
	d.must("vm", "start", "elf")
	d.waitLog("elf", testimage.BootLine(1), 1, bootTimeout)
	d.must("vm", "stop", "elf")
	d.waitLog("elf", testimage.ShutdownMarker, 1, 5*time.Second)
}

// TestStartFailingAfterLaunchLeaksNothing: a start that fails late (its
// published port is already taken on the host, after the VMM was launched
// and booted) is rolled back: state error with the message, and no VMM,
// tap or rule is left.
func TestStartFailingAfterLaunchLeaksNothing(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	// A listener in the daemon's namespace holds the host port.
	holder := exec.Command("ip", "netns", "exec", d.netns, "busybox", "nc", "-l", "-p", "18999")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	time.Sleep(200 * time.Millisecond)

	d.createVM("late", "--publish", "18999:22")
	stderr := d.fails(4, "vm", "start", "late")
	v := d.show("late")
	if v.State != "error" || !strings.Contains(v.LastError, "18999") || !strings.Contains(stderr, v.LogPath) {
		t.Fatalf("state %s, last error %q, stderr %q", v.State, v.LastError, stderr)
	}
	stages := map[string]string{}
	for _, st := range d.ops("late")[0].Stages {
		stages[st.Name] = st.Status
	}
	if stages["vmm.boot"] != "done" || stages["cap.publish"] != "failed" || stages["vmm.launch"] != "undone" || stages["network.tap"] != "undone" {
		t.Fatalf("the failure was not late, or not rolled back: %v", stages)
	}
	if p := d.vmmProcesses(); len(p) > 0 {
		t.Fatalf("VMM left: %v", p)
	}
	if links, _ := exec.Command("ip", "-n", d.netns, "-o", "link", "show").CombinedOutput(); strings.Contains(string(links), "tap-fc-") {
		t.Fatalf("tap left:\n%s", links)
	}
	if rules, _ := exec.Command("ip", "netns", "exec", d.netns, "nft", "list", "chain", "inet", "banger", "publish").CombinedOutput(); strings.Contains(string(rules), "dnat") {
		t.Fatalf("rule left:\n%s", rules)
	}
}

// TestStopWhoseRequestFailsKeepsTheVMRunning: when the shutdown request
// cannot reach the VMM (its control socket is gone), stop fails, says why,
// and the VM keeps running, recorded as such; --force then ends it.
func TestStopWhoseRequestFailsKeepsTheVMRunning(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	d.createVM("hold")
	d.must("vm", "start", "hold")
	d.waitLog("hold", testimage.BootLine(1), 1, bootTimeout)
	v := d.show("hold")
	if err := os.Remove(v.Runtime.ControlSocket); err != nil {
		t.Fatal(err)
	}

	r, err := d.run("vm", "stop", "hold")
	if err == nil || r.code == 0 {
		t.Fatal("stop succeeded without a control socket")
	}
	if !strings.Contains(r.stderr, "still running") || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("the error does not say the vm still runs, or how to force it: %s", r.stderr)
	}
	after := d.show("hold")
	if after.State != "running" || after.Runtime.PID != v.Runtime.PID || !alive(v.Runtime.PID) {
		t.Fatalf("after a failed stop: state %s pid %d alive %v", after.State, after.Runtime.PID, alive(v.Runtime.PID))
	}
	if kind, stages := stageNames(d, "hold"); kind != "vm.stop" || stages["graceful_shutdown"] != "failed" || len(stages) != 1 {
		t.Fatalf("journal %s %v", kind, stages)
	}

	d.must("vm", "stop", "--force", "hold")
	after = d.show("hold")
	if after.State != "stopped" || alive(v.Runtime.PID) {
		t.Fatalf("after --force: state %s, vmm alive %v", after.State, alive(v.Runtime.PID))
	}
	if _, stages := stageNames(d, "hold"); stages["force"] != "note" || stages["kill_running_vm"] != "done" || stages["cleanup_runtime"] != "done" {
		t.Fatalf("forced stop stages %v", stages)
	}
	d.must("vm", "delete", "hold") // the harness's cleanup checks nothing is left
}
