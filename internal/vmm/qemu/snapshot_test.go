package qemu_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil/testimage"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// ticker is a guest program that prints an in-memory counter on the
// console every second: it goes on from where it was after a restore, and
// would start again at 1 after a boot.
const ticker = `#!/bin/sh
i=0
while :; do i=$((i + 1)); echo "TICK $i" >/dev/console; sleep 1; done
`

// addTicker makes the guest on disk run ticker after its boot line.
func addTicker(tb testing.TB, disk string) {
	tb.Helper()
	dir := tb.TempDir()
	inittab := filepath.Join(dir, "inittab")
	script := filepath.Join(dir, "ticker")
	if err := os.WriteFile(inittab, []byte("::sysinit:/etc/init.d/rcS\n::once:/etc/init.d/ticker\n::ctrlaltdel:/etc/init.d/ctrlaltdel\n::shutdown:/bin/sync\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(script, []byte(ticker), 0o755); err != nil {
		tb.Fatal(err)
	}
	cmds := strings.Join([]string{
		"rm /etc/inittab",
		"write " + inittab + " /etc/inittab",
		"write " + script + " /etc/init.d/ticker",
		"sif /etc/init.d/ticker mode 0100755",
	}, "\n")
	cmd := exec.Command("debugfs", "-w", "-f", "-", disk)
	cmd.Stdin = strings.NewReader(cmds)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("debugfs: %v\n%s", err, out)
	}
}

var tickRE = regexp.MustCompile(`TICK (\d+)`)

// ticks is every counter value on the console, in order.
func ticks(spec vmm.Spec) []int {
	var out []int
	for _, m := range tickRE.FindAllStringSubmatch(readLog(spec), -1) {
		n, _ := strconv.Atoi(m[1])
		out = append(out, n)
	}
	return out
}

func lastTick(spec vmm.Spec) int {
	t := ticks(spec)
	if len(t) == 0 {
		return 0
	}
	return t[len(t)-1]
}

// waitTick waits until the guest has counted to n.
func waitTick(spec vmm.Spec, p vmm.Process, n int) error {
	start := time.Now()
	for lastTick(spec) < n {
		if !system.Alive(p.PID, p.StartTime) {
			return fmt.Errorf("qemu exited before TICK %d", n)
		}
		if time.Since(start) > bootTimeout {
			return fmt.Errorf("no TICK %d within %s", n, bootTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// stopVM ends the VM gracefully and waits for QEMU to exit.
func stopVM(tb testing.TB, d *qemu.Driver, spec vmm.Spec, p vmm.Process) {
	tb.Helper()
	if err := d.Shutdown(context.Background(), spec); err != nil {
		tb.Fatalf("Shutdown: %v", err)
	}
	if !system.WaitExit(context.Background(), p.PID, p.StartTime, shutdownTimeout) {
		tb.Fatalf("qemu still running %s after Ctrl-Alt-Del", shutdownTimeout)
	}
}

func killVM(tb testing.TB, p vmm.Process) {
	tb.Helper()
	if err := system.Signal(p.PID, p.StartTime, syscall.SIGKILL); err != nil {
		tb.Fatalf("kill qemu: %v", err)
	}
	if !system.WaitExit(context.Background(), p.PID, p.StartTime, 10*time.Second) {
		tb.Fatalf("qemu pid %d survived SIGKILL", p.PID)
	}
}

// TestPauseSnapshotRestore: a paused guest makes no progress and goes on
// after Resume; a snapshot saved while paused restores into a new QEMU
// process (the first one killed) on a clone of the disk, where the guest
// goes on counting from where it was, without booting again, and still
// shuts down gracefully. A running VM is not saved; a snapshot is not
// restored into another shape, and the refused launch leaves nothing.
func TestPauseSnapshotRestore(t *testing.T) {
	img := testImage(t)
	d := qemu.New()
	ctx := context.Background()
	spec := vmSpec(t, img)
	spec.GenerationID = "11111111-2222-4333-8444-555555555555"
	addTicker(t, spec.RootDisk)
	p := launch(t, d, spec)
	if err := d.Boot(ctx, spec); err != nil {
		t.Fatalf("Boot: %v", err)
	}
	if got := generationID(t, spec); got != spec.GenerationID {
		t.Fatalf("generation id %q, want %q", got, spec.GenerationID)
	}
	if err := waitTick(spec, p, 3); err != nil {
		t.Fatal(err)
	}

	// A running VM is not saved, and the refusal leaves no file.
	snapDir := t.TempDir()
	if _, err := d.SaveSnapshot(ctx, spec, snapDir); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("SaveSnapshot of a running vm: err = %v, want failed precondition", err)
	} else {
		t.Logf("SaveSnapshot of a running vm: %v", err)
	}
	assertEmptyDir(t, snapDir)

	// Paused: the counter stops.
	if err := d.Pause(ctx, spec); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := d.Pause(ctx, spec); err != nil {
		t.Fatalf("second Pause: %v", err)
	}
	paused := lastTick(spec)
	time.Sleep(3 * time.Second) // three ticks' worth of guest time, had it run
	if n := lastTick(spec); n != paused {
		t.Fatalf("the guest counted from %d to %d while paused", paused, n)
	}
	if err := d.Resume(ctx, spec); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if err := waitTick(spec, p, paused+2); err != nil {
		t.Fatalf("after Resume: %v", err)
	}

	// Snapshot: pause, save, clone the disk; the old VMM is then killed.
	if err := d.Pause(ctx, spec); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	atSave := lastTick(spec)
	meta, err := d.SaveSnapshot(ctx, spec, snapDir)
	if err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	t.Logf("snapshot at TICK %d: %d bytes in %.2fs", atSave, meta.SizeBytes, meta.SaveSeconds)
	if meta.VCPUs != 1 || meta.MemoryMiB != 256 || meta.Driver != vmm.KindQEMU || meta.Machine != qemu.Machine || meta.KernelSHA256 == "" {
		t.Fatalf("meta = %+v", meta)
	}
	for _, name := range []string{qemu.StateFile, vmm.SnapshotMetaFile} {
		fi, err := os.Stat(filepath.Join(snapDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	if _, err := d.SaveSnapshot(ctx, spec, snapDir); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second SaveSnapshot into the same dir: err = %v, want already exists", err)
	}
	clone := filepath.Join(t.TempDir(), "clone.ext4")
	copyFile(t, spec.RootDisk, clone)
	if n := lastTick(spec); n != atSave {
		t.Fatalf("the guest counted from %d to %d while its snapshot was saved", atSave, n)
	}
	killVM(t, p)

	// A different shape is refused before any QEMU starts.
	restore := vmSpec(t, img)
	restore.RootDisk = clone
	restore.Restore = &vmm.RestoreSpec{Dir: snapDir}
	restore.GenerationID = "66666666-7777-4888-9999-aaaaaaaaaaaa" // a fork's new generation
	wrong := restore
	wrong.MemoryMiB = 512
	_, err = d.Launch(ctx, wrong)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "1 vcpu/256 MiB on qemu (q35);") || !strings.Contains(err.Error(), "this vm has 1 vcpu/512 MiB on qemu (q35)") {
		t.Fatalf("restore into 512 MiB: err = %v, want a failed precondition naming both shapes", err)
	}
	t.Logf("restore into 512 MiB: %v", err)
	assertNoQEMU(t, wrong)

	// Restore into a new QEMU process: the guest goes on counting.
	rp := launch(t, d, restore)
	if rp.PID == p.PID {
		t.Fatal("restored into the same process")
	}
	if n := lastTick(restore); n != 0 {
		t.Fatalf("the restored guest ran before Boot (TICK %d)", n)
	}
	if err := d.Boot(ctx, restore); err != nil {
		t.Fatalf("Boot of the restored vm: %v", err)
	}
	// The restored VM has the restoring spec's generation, not the
	// snapshot's: the guest is notified that it was copied.
	if got := generationID(t, restore); got != restore.GenerationID {
		t.Fatalf("restored vm's generation id %q, want the new %q", got, restore.GenerationID)
	}
	if err := waitTick(restore, rp, atSave+2); err != nil {
		t.Fatalf("restored guest: %v", err)
	}
	got := ticks(restore)
	if got[0] != atSave+1 {
		t.Fatalf("the restored guest's first tick is %d, want %d (going on from the snapshot)", got[0], atSave+1)
	}
	if strings.Contains(readLog(restore), testimage.BootMarker) {
		t.Fatalf("the restored guest booted again:\n%s", readLog(restore))
	}
	stopVM(t, d, restore, rp)
	if _, err := waitLog(restore, rp, testimage.ShutdownMarker, 1, time.Second); err != nil {
		t.Fatalf("restored guest's graceful stop: %v", err)
	}
	if out, err := exec.Command("e2fsck", "-fn", clone).CombinedOutput(); err != nil {
		t.Fatalf("clone not clean after the restored guest's graceful stop: %v\n%s", err, out)
	}
}

// TestSnapshotMovingMemory: a VM booted with its RAM in a file (mode 0600,
// made by the driver) is snapshotted without its RAM going through the
// state file: the file is moved into the snapshot. Two VMs restored from
// it at once each go on counting from the snapshot's instant, while the
// file stays as it was saved (each maps it copy-on-write). A snapshot
// whose meta names another memory file is refused. Cleanup removes the RAM
// file of a booted VM that was not snapshotted.
func TestSnapshotMovingMemory(t *testing.T) {
	img := testImage(t)
	d := qemu.New()
	ctx := context.Background()
	spec := vmSpec(t, img)
	spec.MemoryFile = filepath.Join(spec.VMDir, "memory.ram")
	addTicker(t, spec.RootDisk)
	p := launch(t, d, spec)
	fi, err := os.Stat(spec.MemoryFile)
	if err != nil {
		t.Fatalf("guest ram file: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("guest ram file mode %v, want 0600", fi.Mode().Perm())
	}
	if err := d.Boot(ctx, spec); err != nil {
		t.Fatalf("Boot: %v", err)
	}
	if err := waitTick(spec, p, 3); err != nil {
		t.Fatal(err)
	}
	if err := d.Pause(ctx, spec); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	atSave := lastTick(spec)
	snapDir := t.TempDir()
	meta, err := d.SaveSnapshotMovingMemory(ctx, spec, snapDir)
	if err != nil {
		t.Fatalf("SaveSnapshotMovingMemory: %v", err)
	}
	killVM(t, p)
	if meta.MemoryFile != qemu.MemoryFile || !slices.Equal(meta.Files, []string{qemu.StateFile, qemu.MemoryFile}) {
		t.Fatalf("meta files %q, memory file %q", meta.Files, meta.MemoryFile)
	}
	if _, err := os.Stat(spec.MemoryFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the guest ram file is still where the vm had it: %v", err)
	}
	state, err := os.Stat(filepath.Join(snapDir, qemu.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	ram := filepath.Join(snapDir, qemu.MemoryFile)
	mem, err := os.Stat(ram)
	if err != nil {
		t.Fatal(err)
	}
	allocated := mem.Sys().(*syscall.Stat_t).Blocks * 512
	t.Logf("state file %d bytes, memory file %d bytes allocated, saved in %.3fs", state.Size(), allocated, meta.SaveSeconds)
	// The guest's RAM is in the memory file, not in the state file.
	if state.Size() > 4<<20 || allocated < 8<<20 {
		t.Fatalf("state file %d bytes and memory file %d bytes: the ram was not left out of the state", state.Size(), allocated)
	}
	if mem.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot memory file mode %v, want 0600", mem.Mode().Perm())
	}
	before := fileSum(t, ram)

	// Two restores of the one snapshot run at once.
	var restores []vmm.Spec
	var procs []vmm.Process
	for range 2 {
		r := vmSpec(t, img)
		copyFile(t, spec.RootDisk, r.RootDisk)
		r.Restore = &vmm.RestoreSpec{Dir: snapDir}
		restores = append(restores, r)
		procs = append(procs, launch(t, d, r))
	}
	for i, r := range restores {
		if err := d.Boot(ctx, r); err != nil {
			t.Fatalf("Boot of restore %d: %v", i, err)
		}
	}
	for i, r := range restores {
		if err := waitTick(r, procs[i], atSave+3); err != nil {
			t.Fatalf("restore %d: %v", i, err)
		}
		if got := ticks(r); got[0] != atSave+1 {
			t.Fatalf("restore %d's first tick is %d, want %d", i, got[0], atSave+1)
		}
	}
	for _, rp := range procs {
		killVM(t, rp)
	}
	if after := fileSum(t, ram); after != before {
		t.Fatal("the snapshot's memory file changed while restored guests ran")
	}

	// A meta that names another memory file is refused, and starts nothing.
	metaPath := filepath.Join(snapDir, vmm.SnapshotMetaFile)
	raw, err := os.ReadFile(metaPath)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["memory_file"] = "../memory.ram"
	bad, _ := json.Marshal(m)
	if err := os.WriteFile(metaPath, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	r := vmSpec(t, img)
	r.Restore = &vmm.RestoreSpec{Dir: snapDir}
	if _, err := d.Launch(ctx, r); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("restore with memory file ../memory.ram: err = %v, want failed precondition", err)
	}
	assertNoQEMU(t, r)

	// A booted VM's ram file goes with Cleanup.
	other := vmSpec(t, img)
	other.MemoryFile = filepath.Join(other.VMDir, "memory.ram")
	op := launch(t, d, other)
	killVM(t, op)
	if err := d.Cleanup(ctx, other); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other.MemoryFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("guest ram file left after Cleanup: %v", err)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// TestGenerationID: the vmgenid device takes the spec's GUID; anything
// else is refused before launch.
func TestGenerationID(t *testing.T) {
	d := qemu.New()
	spec := vmm.Spec{VCPUs: 1, MemoryMiB: 256, Kernel: "k", RootDisk: "d", ControlSocket: "s", LogPath: "l"}
	if err := d.Validate(spec); err != nil {
		t.Fatalf("no generation id: %v", err)
	}
	args := strings.Join(d.Args(spec, "tcg", false), " ")
	if !strings.Contains(args, "-device vmgenid,id=vmgenid0,guid=auto") {
		t.Fatalf("args without a generation id: %s", args)
	}
	spec.GenerationID = "0f8fad5b-d9cb-469f-a165-70867728950e"
	if err := d.Validate(spec); err != nil {
		t.Fatalf("generation id: %v", err)
	}
	if args := strings.Join(d.Args(spec, "tcg", false), " "); !strings.Contains(args, "guid="+spec.GenerationID) {
		t.Fatalf("args: %s", args)
	}
	spec.GenerationID = "auto,id=x"
	if err := d.Validate(spec); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad generation id: err = %v, want invalid argument", err)
	}
	spec.GenerationID = ""
	spec.Restore = &vmm.RestoreSpec{Dir: "x"}
	if args := d.Args(spec, "tcg", false); strings.Join(args[len(args)-2:], " ") != "-incoming defer" {
		t.Fatalf("restore args: %s", args)
	}
}

// generationID asks QEMU for the VM generation ID it exposes to the guest.
func generationID(t *testing.T, spec vmm.Spec) string {
	t.Helper()
	mon, err := qmp.NewSocketMonitor("unix", spec.ControlSocket, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	raw, err := mon.Run([]byte(`{"execute":"query-vm-generation-id"}`))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Return struct {
			GUID string `json:"guid"`
		} `json:"return"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	return r.Return.GUID
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("%s left in %s", e.Name(), dir)
	}
}

// BenchmarkSnapshot measures, for a 256 MiB and a 1 GiB guest under the
// driver (booted once, counting on its console), the latency of Pause and
// Resume, the time and file size of SaveSnapshot, and the time of a
// Launch that restores the last snapshot into a new QEMU (Boot excluded).
// Run with BANGER_VM_TESTS=1 go test -run '^$' -bench Snapshot -benchtime 5x.
func BenchmarkSnapshot(b *testing.B) {
	img := testImage(b)
	for _, mib := range []int{256, 1024} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			d := qemu.New()
			ctx := context.Background()
			spec := vmSpec(b, img)
			spec.MemoryMiB = mib
			addTicker(b, spec.RootDisk)
			p := launch(b, d, spec)
			b.Cleanup(func() {
				if system.Alive(p.PID, p.StartTime) {
					killVM(b, p)
				}
			})
			if err := d.Boot(ctx, spec); err != nil {
				b.Fatalf("Boot: %v", err)
			}
			if err := waitTick(spec, p, 2); err != nil {
				b.Fatal(err)
			}
			var pauses, resumes, saves, sizes []float64
			var last string
			for range b.N {
				start := time.Now()
				if err := d.Pause(ctx, spec); err != nil {
					b.Fatalf("Pause: %v", err)
				}
				pauses = append(pauses, time.Since(start).Seconds()*1000)
				last = b.TempDir()
				start = time.Now()
				meta, err := d.SaveSnapshot(ctx, spec, last)
				if err != nil {
					b.Fatalf("SaveSnapshot: %v", err)
				}
				saves = append(saves, time.Since(start).Seconds())
				sizes = append(sizes, float64(meta.SizeBytes)/(1<<20))
				start = time.Now()
				if err := d.Resume(ctx, spec); err != nil {
					b.Fatalf("Resume: %v", err)
				}
				resumes = append(resumes, time.Since(start).Seconds()*1000)
				if err := waitTick(spec, p, lastTick(spec)+1); err != nil {
					b.Fatal(err)
				}
			}
			// Restore the last snapshot (the disk clone is only taken
			// here: the guest does not write to its disk while it counts).
			if err := d.Pause(ctx, spec); err != nil {
				b.Fatal(err)
			}
			killVM(b, p)
			// Baseline: a Launch that prepares a boot, same shape.
			plain := vmSpec(b, img)
			plain.MemoryMiB = mib
			start := time.Now()
			pp := launch(b, d, plain)
			b.ReportMetric(time.Since(start).Seconds(), "boot-launch-s")
			killVM(b, pp)
			restore := vmSpec(b, img)
			restore.MemoryMiB = mib
			restore.RootDisk = spec.RootDisk
			restore.Restore = &vmm.RestoreSpec{Dir: last}
			start = time.Now()
			rp := launch(b, d, restore)
			restored := time.Since(start).Seconds()
			if err := d.Boot(ctx, restore); err != nil {
				b.Fatal(err)
			}
			if err := waitTick(restore, rp, 1); err != nil {
				b.Fatal(err)
			}
			killVM(b, rp)
			median(b, "pause-median-ms", pauses)
			median(b, "resume-median-ms", resumes)
			median(b, "save-median-s", saves)
			median(b, "size-MiB", sizes)
			b.ReportMetric(restored, "restore-launch-s")
		})
	}
}

// median reports the median of xs as metric unit, and its range in the log.
func median(b *testing.B, unit string, xs []float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	b.ReportMetric(s[len(s)/2], unit)
	b.Logf("%s: min %.3g max %.3g of %d", unit, s[0], s[len(s)-1], len(s))
}
