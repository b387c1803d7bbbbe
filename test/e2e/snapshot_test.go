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

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// tickerTrigger is the tick at which the guest writes tickerFile.
const tickerTrigger = 12

// tickerFile is the file the guest writes (and syncs) at tickerTrigger.
const tickerFile = "/var/written-after-snapshot"

// ticker counts in memory, printing each value on the console with
// whether tickerFile is on the root disk: the caches are dropped first, so
// the guest reads the disk, not what its memory remembers. It writes the
// file once, at tickerTrigger.
var ticker = `#!/bin/sh
i=0
while :; do
	i=$((i + 1))
	if [ "$i" -eq ` + strconv.Itoa(tickerTrigger) + ` ]; then echo x >` + tickerFile + `; sync; fi
	echo 3 >/proc/sys/vm/drop_caches
	if [ -e ` + tickerFile + ` ]; then f=yes; else f=no; fi
	echo "TICK $i FILE=$f" >/dev/console
	sleep 1
done
`

// addTicker makes the guest on the (stopped) VM's disk run ticker after
// its boot line.
func addTicker(t *testing.T, disk string) {
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

var tickRE = regexp.MustCompile(`TICK (\d+) FILE=(yes|no)`)

type tick struct {
	n    int
	file bool
}

// ticks is every tick in log, in order.
func ticks(log string) []tick {
	var out []tick
	for _, m := range tickRE.FindAllStringSubmatch(log, -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, tick{n, m[2] == "yes"})
	}
	return out
}

func lastTick(log string) tick {
	t := ticks(log)
	if len(t) == 0 {
		return tick{}
	}
	return t[len(t)-1]
}

// waitTick waits until the guest has counted to n since the log held skip
// bytes, and returns the log from there.
func (d *daemon) waitTick(ref string, skip, n int) string {
	d.t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for {
		log := d.must("vm", "logs", ref)
		if len(log) >= skip && lastTick(log[skip:]).n >= n {
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
// the file is gone from the disk and the counter goes on from the
// snapshot's value without a boot; a VM of another shape is refused the
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
	v := d.createVM("snap")
	addTicker(t, filepath.Join(v.VMDir, "rootfs.ext4"))
	d.must("vm", "start", "snap")
	d.waitTick("snap", 0, 2)

	// Pause: the counter stops; resume: it goes on.
	d.must("vm", "pause", "snap")
	if s := d.show("snap"); s.State != "paused" {
		t.Fatalf("after pause: %s", s.State)
	}
	frozen := lastTick(d.must("vm", "logs", "snap")).n
	time.Sleep(3 * time.Second) // three ticks' worth
	if n := lastTick(d.must("vm", "logs", "snap")).n; n != frozen {
		t.Fatalf("a paused guest counted from %d to %d", frozen, n)
	}

	// A daemon restart re-adopts it paused.
	pid := d.show("snap").Runtime.PID
	d.stop()
	d.start()
	if s := d.show("snap"); s.State != "paused" || s.Runtime.PID != pid {
		t.Fatalf("after a daemon restart: %s pid %d (was %d)", s.State, s.Runtime.PID, pid)
	}
	if n := lastTick(d.must("vm", "logs", "snap")).n; n != frozen {
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
	if atSnapshot.n >= tickerTrigger || atSnapshot.file {
		t.Fatalf("the snapshot came too late (tick %+v): the test needs it before tick %d", atSnapshot, tickerTrigger)
	}
	if fi, err := os.Stat(sn.Dir); err != nil || fi.Mode().Perm() != 0o700 || sn.SizeBytes <= 0 {
		t.Fatalf("snapshot dir %s: %v %v, size %d", sn.Dir, fi, err, sn.SizeBytes)
	}
	// The guest writes its file; the disk has it.
	after := d.waitTick("snap", 0, tickerTrigger+1)
	if !lastTick(after).file {
		t.Fatalf("the guest did not see the file it wrote: %+v", lastTick(after))
	}

	// Restore: the file is gone from the disk, the counter goes on from
	// the snapshot's value (no boot: no boot line, no count from 1).
	skip := len(d.must("vm", "logs", "snap"))
	d.must("vm", "restore", "snap", "s1")
	restored := d.waitTick("snap", skip, atSnapshot.n+2)
	ts := ticks(restored)
	if strings.Contains(restored, testimage.BootMarker) {
		t.Fatalf("the restored guest booted:\n%s", tail([]byte(restored), 2000))
	}
	first := ts[0]
	if first.n <= 1 || first.n > atSnapshot.n+1 {
		t.Fatalf("after restore the counter went on at %d; the snapshot was at %d", first.n, atSnapshot.n)
	}
	for _, tk := range ts {
		if tk.n < tickerTrigger && tk.file {
			t.Fatalf("after restore, at tick %d, the file written after the snapshot is on the disk", tk.n)
		}
	}
	if s := d.show("snap"); s.State != "running" || s.Runtime.PID == pid || alive(pid) {
		t.Fatalf("after restore: %s pid %d (old %d alive %v)", s.State, s.Runtime.PID, pid, alive(pid))
	}

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
