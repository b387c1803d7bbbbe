package e2e

import (
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
