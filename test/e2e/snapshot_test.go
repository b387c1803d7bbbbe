package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// tickerTrigger is the tick at which the guest writes tickerFile.
const tickerTrigger = 12

// tickerFile is the file the guest writes (and syncs) at tickerTrigger.
const tickerFile = "/var/written-after-snapshot"

// ticker counts in memory, printing each value on the console. At
// tickerTrigger it writes tickerFile, syncs, and freezes the filesystem for
// an instant, which writes the journal's blocks home.
var ticker = `#!/bin/sh
i=0
while :; do
	i=$((i + 1))
	if [ "$i" -eq ` + strconv.Itoa(tickerTrigger) + ` ]; then
		echo x >` + tickerFile + `; sync
		fsfreeze --freeze / && fsfreeze --unfreeze /
	fi
	echo "TICK $i" >/dev/console
	sleep 1
done
`

// addTicker makes the guest on the (stopped) VM's disk run ticker after
// its boot line.
func addTicker(t testing.TB, disk string) {
	t.Helper()
	dir := t.TempDir()
	inittab := filepath.Join(dir, "inittab")
	script := filepath.Join(dir, "ticker")
	if err := os.WriteFile(inittab, []byte("::sysinit:/etc/init.d/rcS\n::once:/etc/init.d/ticker\n::ctrlaltdel:/etc/init.d/ctrlaltdel\n::shutdown:/bin/sync\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, []byte(ticker), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("debugfs", "-w", "-f", "-", disk)
	cmd.Stdin = strings.NewReader(strings.Join([]string{
		"rm /etc/inittab",
		"write " + inittab + " /etc/inittab",
		"write " + script + " /etc/init.d/ticker",
		"sif /etc/init.d/ticker mode 0100755",
	}, "\n"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
}

var tickRE = regexp.MustCompile(`TICK (\d+)`)

// ticks is every tick in log, in order.
func ticks(log string) []int {
	var out []int
	for _, m := range tickRE.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

func lastTick(log string) int {
	t := ticks(log)
	if len(t) == 0 {
		return 0
	}
	return t[len(t)-1]
}

// diskHas reports whether the file guest path is on the ext4 disk, as a
// mount would see it: a copy of the disk gets its journal replayed
// (e2fsck), then debugfs looks.
func diskHas(t *testing.T, disk, path string) bool {
	t.Helper()
	cp := filepath.Join(t.TempDir(), "disk.ext4")
	if out, err := exec.Command("cp", "--sparse=always", disk, cp).CombinedOutput(); err != nil {
		t.Fatalf("copy disk: %v %s", err, out)
	}
	out, err := exec.Command("e2fsck", "-fy", cp).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() >= 4) {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	out, err = exec.Command("debugfs", "-R", "stat "+path, cp).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v\n%s", err, out)
	}
	return !strings.Contains(string(out), "File not found")
}

// waitTick waits until the guest has counted to n since the log held skip
// bytes, and returns the log from there.
func (d *daemon) waitTick(ref string, skip, n int) string {
	d.t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for {
		log := d.must("vm", "logs", ref)
		if len(log) >= skip && lastTick(log[skip:]) >= n {
			return log[skip:]
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no TICK %d in the log of %s within %s; tail:\n%s", n, ref, bootTimeout, tail([]byte(log), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (d *daemon) snapshots() []api.Snapshot {
	d.t.Helper()
	var out []api.Snapshot
	mustJSON(d.t, d.must("vm", "snapshot", "list", "-o", "json"), &out)
	return out
}

// TestPauseSnapshotRestore on a real guest: pause stops its counter and
// resume lets it go on (also across a daemon restart, which re-adopts the
// VM paused); a snapshot, then a file the guest writes, then a restore:
// the counter goes on from the snapshot's value without a boot and the file
// is gone from the disk; a VM of another shape is refused the
// snapshot; a paused VM stops gracefully; a snapshot outlives its VM and
// keeps its image; snapshot delete removes its files.
func TestPauseSnapshotRestore(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	snapDir := filepath.Join(d.stateDir, "snapshots")
	t.Cleanup(func() { // before the daemon's own cleanup (LIFO)
		for _, sn := range d.snapshots() {
			d.run("vm", "snapshot", "delete", sn.Name)
		}
		if entries, _ := os.ReadDir(snapDir); len(entries) > 0 {
			t.Errorf("leaked snapshot dirs: %v", entries)
		}
	})
	// A raw disk: the test writes its ticker into rootfs.ext4 with debugfs.
	v := d.createVM("snap", "--disk-strategy", "sparse-copy")
	addTicker(t, filepath.Join(v.VMDir, "rootfs.ext4"))
	d.must("vm", "start", "snap")
	d.waitTick("snap", 0, 2)

	// Pause: the counter stops; resume: it goes on.
	d.must("vm", "pause", "snap")
	if s := d.show("snap"); s.State != "paused" {
		t.Fatalf("after pause: %s", s.State)
	}
	frozen := lastTick(d.must("vm", "logs", "snap"))
	time.Sleep(3 * time.Second) // three ticks' worth
	if n := lastTick(d.must("vm", "logs", "snap")); n != frozen {
		t.Fatalf("a paused guest counted from %d to %d", frozen, n)
	}

	// A daemon restart re-adopts it paused.
	pid := d.show("snap").Runtime.PID
	d.stop()
	d.start()
	if s := d.show("snap"); s.State != "paused" || s.Runtime.PID != pid {
		t.Fatalf("after a daemon restart: %s pid %d (was %d)", s.State, s.Runtime.PID, pid)
	}
	if n := lastTick(d.must("vm", "logs", "snap")); n != frozen {
		t.Fatalf("the guest counted from %d to %d across a daemon restart", frozen, n)
	}
	d.must("vm", "resume", "snap")
	d.waitTick("snap", 0, frozen+1)

	// Snapshot (before the guest writes its file).
	var sn api.Snapshot
	mustJSON(t, d.must("vm", "snapshot", "create", "snap", "s1", "-o", "json"), &sn)
	if s := d.show("snap"); s.State != "running" || s.Runtime.PID != pid {
		t.Fatalf("after snapshot: %s pid %d", s.State, s.Runtime.PID)
	}
	atSnapshot := lastTick(d.must("vm", "logs", "snap"))
	if atSnapshot >= tickerTrigger-2 {
		t.Fatalf("the snapshot came too late (tick %d): the test needs it well before tick %d", atSnapshot, tickerTrigger)
	}
	if fi, err := os.Stat(sn.Dir); err != nil || fi.Mode().Perm() != 0o700 || sn.SizeBytes <= 0 {
		t.Fatalf("snapshot dir %s: %v %v, size %d", sn.Dir, fi, err, sn.SizeBytes)
	}
	// The guest writes its file; the disk has it.
	disk := filepath.Join(v.VMDir, "rootfs.ext4")
	d.waitTick("snap", 0, tickerTrigger+1)
	if !diskHas(t, disk, tickerFile) {
		t.Fatalf("the disk does not hold %s, which the guest wrote at tick %d", tickerFile, tickerTrigger)
	}

	// Restore: the counter goes on from the snapshot's value (no boot: no
	// boot line, no count from 1), and the file is gone from the disk. The
	// VM is killed before the guest reaches the tick that writes it again.
	// Paused first, so that the old guest prints nothing more: what the log
	// holds after skip is the restored guest's (restore discards a paused VM).
	d.must("vm", "pause", "snap")
	skip := len(d.must("vm", "logs", "snap"))
	d.must("vm", "restore", "snap", "s1")
	if s := d.show("snap"); s.State != "running" || s.Runtime.PID == pid || alive(pid) {
		t.Fatalf("after restore: %s pid %d (old %d alive %v)", s.State, s.Runtime.PID, pid, alive(pid))
	}
	d.waitTick("snap", skip, atSnapshot+1)
	d.must("vm", "kill", "--signal", "KILL", "snap")
	restored := d.must("vm", "logs", "snap")[skip:]
	ts := ticks(restored)
	if strings.Contains(restored, testimage.BootMarker) {
		t.Fatalf("the restored guest booted:\n%s", tail([]byte(restored), 2000))
	}
	if ts[0] <= 1 || ts[0] > atSnapshot+1 {
		t.Fatalf("after restore the counter went on at %d; the snapshot was at %d", ts[0], atSnapshot)
	}
	if last := ts[len(ts)-1]; last >= tickerTrigger {
		t.Fatalf("the restored guest reached tick %d before it was killed: the disk check cannot tell", last)
	}
	if diskHas(t, disk, tickerFile) {
		t.Fatalf("after restore the disk still holds %s, written after the snapshot", tickerFile)
	}
	d.must("vm", "start", "snap")
	d.waitLog("snap", testimage.BootLine(2), 1, bootTimeout)

	// Another machine shape is refused, and left as it was.
	d.createVM("other", "--memory", "512M")
	msg := d.fails(5, "vm", "restore", "other", "s1")
	if !strings.Contains(msg, "256 MiB") || !strings.Contains(msg, "512 MiB") {
		t.Fatalf("restore into another shape: %s", msg)
	}
	if s := d.show("other"); s.State != "stopped" {
		t.Fatalf("a refused restore left the vm %s", s.State)
	}

	d.must("vm", "delete", "other")

	// A paused VM stops gracefully (resumed first).
	d.must("vm", "pause", "snap")
	d.must("vm", "stop", "snap")
	d.waitLog("snap", testimage.ShutdownMarker, 1, 30*time.Second)
	if _, stages := stageNames(d, "snap"); stages["vmm.resume"] != "done" || stages["wait_for_exit"] != "done" {
		t.Fatalf("stop of a paused vm: %v", stages)
	}

	// Deleting the vm keeps its snapshot, and the snapshot keeps the image.
	d.must("vm", "delete", "snap")
	if _, err := os.Stat(filepath.Join(sn.Dir, "rootfs.ext4")); err != nil || len(d.snapshots()) != 1 {
		t.Fatalf("the snapshot did not outlive its vm: %v", err)
	}
	if msg := d.fails(5, "image", "delete", "default"); !strings.Contains(msg, `snapshot "s1"`) {
		t.Fatalf("image delete with a snapshot: %s", msg)
	}

	// Delete: the snapshot's dir goes.
	d.must("vm", "snapshot", "delete", "s1")
	if _, err := os.Stat(sn.Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir after delete: %v", err)
	}
	if n := len(d.snapshots()); n != 0 {
		t.Fatalf("%d snapshots left", n)
	}
}
