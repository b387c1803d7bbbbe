package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
)

// BenchmarkRestoreVsStart measures, through the CLI, alternating in one
// process on one VM (the tiny test guest with its ticker, 256 MiB):
//   - cold: `vm start` until the guest's first tick (booted, init done);
//   - warm: `vm restore VM SNAP` until the restored guest's next tick;
//
// each from a stopped VM (`vm kill` between rounds, not measured); and
// `vm pause`, `vm resume` and `vm snapshot create` wall times. The figures
// go to docs/benchmarks.md. Run it with
//
//	BANGER_VM_TESTS=1 go test ./test/e2e -run '^$' -bench RestoreVsStart -benchtime 5x -timeout 30m
func BenchmarkRestoreVsStart(b *testing.B) {
	requireE2E(b)
	d := startDaemon(b)
	d.importTestImage()
	v := d.createVM("bench")
	addTicker(b, filepath.Join(v.VMDir, "rootfs.ext4"))
	d.must("vm", "start", "bench")
	b.Cleanup(func() {
		for _, sn := range d.snapshots() {
			d.run("vm", "snapshot", "delete", sn.Name)
		}
	})
	logLen := func() int {
		fi, err := os.Stat(v.LogPath)
		if err != nil {
			return 0
		}
		return int(fi.Size())
	}
	// nextTick waits for a tick written after the log held skip bytes.
	nextTick := func(skip int) {
		deadline := time.Now().Add(bootTimeout)
		for {
			if log, err := os.ReadFile(v.LogPath); err == nil && len(log) > skip && len(ticks(string(log[skip:]))) > 0 {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("no tick within %s", bootTimeout)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	timed := func(fn func()) time.Duration {
		t0 := time.Now()
		fn()
		return time.Since(t0)
	}
	nextTick(0)
	var pause, resume, save []time.Duration
	for i := 0; i < 3; i++ {
		pause = append(pause, timed(func() { d.must("vm", "pause", "bench") }))
		resume = append(resume, timed(func() { d.must("vm", "resume", "bench") }))
	}
	var sn api.Snapshot
	save = append(save, timed(func() { mustJSON(b, d.must("vm", "snapshot", "create", "bench", "s1", "-o", "json"), &sn) }))

	var cold, warm []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d.must("vm", "kill", "--signal", "KILL", "bench")
		skip := logLen()
		cold = append(cold, timed(func() { d.must("vm", "start", "bench"); nextTick(skip) }))
		d.must("vm", "kill", "--signal", "KILL", "bench")
		skip = logLen()
		warm = append(warm, timed(func() { d.must("vm", "restore", "bench", "s1"); nextTick(skip) }))
	}
	b.StopTimer()
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	b.ReportMetric(med(cold).Seconds(), "cold-s")
	b.ReportMetric(med(warm).Seconds(), "restore-s")
	b.ReportMetric(float64(med(cold))/float64(med(warm)), "cold/restore")
	b.ReportMetric(float64(med(pause).Milliseconds()), "pause-ms")
	b.ReportMetric(float64(med(resume).Milliseconds()), "resume-ms")
	b.ReportMetric(save[0].Seconds(), "snapshot-s")
	b.ReportMetric(float64(sn.SizeBytes)/(1<<20), "snapshot-MiB")
	b.Logf("cold %v; restore %v; pause %v; resume %v; snapshot %v, %d bytes", cold, warm, pause, resume, save, sn.SizeBytes)
}
