package testimage

import (
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkBoot measures, per QEMU configuration under TCG, the wall time
// from starting QEMU to the boot marker and from QMP send-key
// ctrl-alt-delete to QEMU's exit. Run with BANGER_VM_TESTS=1 and e.g.
// -bench Boot -benchtime 7x. Figures: median and spread, in seconds.
func BenchmarkBoot(b *testing.B) {
	img := buildImage(b)
	for _, c := range []struct {
		name string
		cfg  vmConfig
	}{
		{"q35-max-paused", vmConfig{Machine: "q35", CPU: "max", Paused: true}},
		{"q35-max-running", vmConfig{Machine: "q35", CPU: "max"}},
		{"q35-qemu64-paused", vmConfig{Machine: "q35", CPU: "qemu64", Paused: true}},
		{"pc-max-paused", vmConfig{Machine: "pc", CPU: "max", Paused: true}},
		{"microvm-max-paused", vmConfig{Machine: "microvm", CPU: "max", Paused: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var boots, stops []float64
			failedBoots, failedStops := 0, 0
			for range b.N {
				cfg := c.cfg
				cfg.Disk = filepath.Join(b.TempDir(), "root.ext4")
				copyFile(b, img.Rootfs, cfg.Disk)
				v := startVM(b, img, cfg)
				took, err := v.waitConsole(BootMarker, 20*time.Second)
				if err != nil {
					failedBoots++
					b.Logf("%s: %v", c.name, err)
					continue
				}
				boots = append(boots, took.Seconds())
				sent := time.Now()
				if err := v.sendCtrlAltDel(); err != nil {
					failedStops++
					b.Logf("%s: %v", c.name, err)
					continue
				}
				if err := v.waitExit(15 * time.Second); err != nil {
					failedStops++
					b.Logf("%s: after send-key: %v", c.name, err)
					continue
				}
				stops = append(stops, time.Since(sent).Seconds())
			}
			report(b, "boot", boots)
			report(b, "stop", stops)
			b.ReportMetric(float64(failedBoots), "boot-failures")
			b.ReportMetric(float64(failedStops), "stop-failures")
			b.Logf("%s N=%d boots %.2f stops %.2f", c.name, b.N, boots, stops)
		})
	}
}

func report(b *testing.B, what string, xs []float64) {
	if len(xs) == 0 {
		return
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	b.ReportMetric(s[len(s)/2], what+"-median-s")
	b.ReportMetric(s[0], what+"-min-s")
	b.ReportMetric(s[len(s)-1], what+"-max-s")
}
