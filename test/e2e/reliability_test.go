package e2e

import (
	"syscall"

	"github.com/banger-vm/banger/api"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// importVariant imports the test guest as image name with its boot script
// (/etc/init.d/rcS) replaced by rcS: a copy of the cached root disk edited
// with debugfs, so the cached image is never touched.
func (d *daemon) importVariant(name, rcS string) {
	d.t.Helper()
	im := testImage(d.t)
	dir := d.t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command("cp", "--sparse=always", im.Rootfs, rootfs).CombinedOutput(); err != nil {
		d.t.Fatalf("copy rootfs: %v %s", err, out)
	}
	script := filepath.Join(dir, "rcS")
	if err := os.WriteFile(script, []byte(rcS), 0o755); err != nil {
		d.t.Fatal(err)
	}
	for _, req := range []string{"rm /etc/init.d/rcS", "write " + script + " /etc/init.d/rcS", "sif /etc/init.d/rcS mode 0100755"} {
		if out, err := exec.Command("debugfs", "-w", "-R", req, rootfs).CombinedOutput(); err != nil {
			d.t.Fatalf("debugfs %q: %v %s", req, err, out)
		}
	}
	kernel := im.Kernel
	if vmmKind() == "firecracker" {
		kernel = im.Vmlinux
	}
	d.must("image", "import", name, "--kernel", kernel, "--initrd", im.Initrd, "--rootfs", rootfs)
}

// rcSHead mounts what the stock boot script mounts and prints its boot line.
const rcSHead = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/mounts ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
echo "` + testimage.BootMarker + ` count=1" >/dev/console
`

// floodRcS prints numbered lines on the console as fast as it can, forever.
const floodRcS = rcSHead + `i=0
while :; do i=$((i+1)); echo "FLOOD $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; done >/dev/console &
`

var floodRE = regexp.MustCompile(`FLOOD (\d+) `)

// lastFlood is the highest line number in the log.
func lastFlood(logs string) int {
	n := 0
	for _, m := range floodRE.FindAllStringSubmatch(logs, -1) {
		if k, _ := strconv.Atoi(m[1]); k > n {
			n = k
		}
	}
	return n
}

// TestConsoleFloodStaysWithinTheLogCap: a guest printing on its console in
// a loop keeps vm.log and vm.log.1 within --vm-log-cap, `vm logs` shows the
// latest lines (the boot line has rotated out), and the VM still stops.
func TestConsoleFloodStaysWithinTheLogCap(t *testing.T) {
	requireE2E(t)
	const logCap = 64 << 10
	d := startDaemon(t, "--vm-log-cap", "64KiB")
	d.importVariant("flood", floodRcS)
	v := d.createVM("flood", "--image", "flood")
	d.must("vm", "start", "flood")
	d.waitLog("flood", "FLOOD ", 1, bootTimeout)
	// Far more than the cap went through: a line is about 80 bytes.
	deadline := time.Now().Add(3 * time.Minute)
	var logs string
	for {
		logs = d.must("vm", "logs", "flood")
		if lastFlood(logs) > 4*logCap/80 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest printed only %d lines in 3 minutes", lastFlood(logs))
		}
		time.Sleep(time.Second)
	}
	var total int64
	for _, p := range []string{v.LogPath, v.LogPath + ".1"} {
		if st, err := os.Stat(p); err == nil {
			total += st.Size()
		}
	}
	if total > logCap {
		t.Fatalf("vm.log + vm.log.1 = %d bytes, over the cap of %d", total, logCap)
	}
	if strings.Contains(logs, testimage.BootMarker) {
		t.Fatal("the boot line is still in the log: nothing rotated")
	}
	first := lastFlood(logs)
	time.Sleep(2 * time.Second)
	if later := lastFlood(d.must("vm", "logs", "flood")); later <= first {
		t.Fatalf("vm logs shows line %d, then %d: not the latest output", first, later)
	}
	t.Logf("log pair %d bytes (cap %d) after %d lines", total, logCap, first)
	d.must("vm", "stop", "--timeout", "5s", "flood")
	if got := d.show("flood"); got.State != "stopped" {
		t.Fatalf("state after stop: %s (%s)", got.State, got.LastError)
	}
}

// waitExited polls vm show for up to 5 s until the VM is no longer
// running, and returns it with the time that took.
func (d *daemon) waitExited(ref string) (api.VM, time.Duration) {
	d.t.Helper()
	began := time.Now()
	for {
		v := d.show(ref)
		if v.State != "running" {
			return v, time.Since(began)
		}
		if time.Since(began) > 5*time.Second {
			d.t.Fatalf("vm %s still recorded running %s after its vmm exited", ref, time.Since(began).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestVMMKilledIsNoticed: kill -9 of a running VM's QEMU is seen within
// seconds without any command: the VM is recorded in error with the signal,
// its tap and published-port rule are gone, vm ssh says why, and the exit
// is journalled as vm.exited.
func TestVMMKilledIsNoticed(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	d.createVM("x1", "--publish", "18080:80")
	d.must("vm", "start", "x1")
	d.waitLog("x1", testimage.BootLine(1), 1, bootTimeout)
	v := d.show("x1")
	tap := v.Runtime.Tap
	if err := syscall.Kill(v.Runtime.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got, took := d.waitExited("x1")
	t.Logf("kill -9 of pid %d noticed: vm show said %s after %s", v.Runtime.PID, got.State, took.Round(time.Millisecond))
	if got.State != "error" || got.LastExit == nil || got.LastExit.Signal != "KILL" {
		t.Fatalf("after kill -9: state %s, last exit %+v; want error, signal KILL", got.State, got.LastExit)
	}
	if got.Runtime.PID != 0 || got.Runtime.Tap != "" {
		t.Fatalf("runtime still recorded: %+v", got.Runtime)
	}
	if links, _ := exec.Command("ip", "-n", d.netns, "-o", "link", "show").CombinedOutput(); tap != "" && strings.Contains(string(links), tap) {
		t.Fatalf("tap %s left after the vmm died:\n%s", tap, links)
	}
	if rules, err := exec.Command("ip", "netns", "exec", d.netns, "nft", "list", "chain", "inet", "banger", "publish").CombinedOutput(); err == nil && strings.Contains(string(rules), "18080") {
		t.Fatalf("publish rule left after the vmm died:\n%s", rules)
	}
	if msg := d.fails(5, "vm", "ssh", "x1", "--", "true"); !strings.Contains(msg, "killed by signal KILL") {
		t.Fatalf("vm ssh on the dead vm: %q, want the signal named", msg)
	}
	if ops := d.ops("x1"); len(ops) == 0 || ops[0].Kind != "vm.exited" || ops[0].Status != "done" {
		t.Fatalf("newest operation: %+v, want vm.exited done", ops[0])
	}
	// It starts again, and a later stop is an ordinary one.
	d.must("vm", "start", "x1")
	d.waitLog("x1", testimage.BootLine(2), 1, bootTimeout)
	if v := d.show("x1"); v.LastExit != nil {
		t.Fatalf("a new start keeps the old exit: %+v", v.LastExit)
	}
}

// powerOffRcS boots, prints its boot line and powers the guest off.
const powerOffRcS = rcSHead + `sync
poweroff -f
`

// TestGuestPowerOffIsACleanStop: a guest that powers itself off is recorded
// stopped, with a clean exit, without any command.
func TestGuestPowerOffIsACleanStop(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importVariant("off", powerOffRcS)
	d.createVM("off", "--image", "off")
	d.must("vm", "start", "off")
	deadline := time.Now().Add(bootTimeout)
	for {
		v := d.show("off")
		if v.State != "running" {
			if v.State != "stopped" || v.LastExit == nil || !v.LastExit.Known || v.LastExit.Code != 0 || v.LastExit.Signal != "" {
				t.Fatalf("after the guest powered off: state %s, last exit %+v; want stopped, code 0", v.State, v.LastExit)
			}
			if !strings.Contains(v.LastExit.LogTail, testimage.BootMarker) {
				t.Fatalf("the exit's log tail lacks the boot line: %q", v.LastExit.LogTail)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not power off within %s", bootTimeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
