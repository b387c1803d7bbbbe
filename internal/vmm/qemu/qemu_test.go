package qemu_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/testutil/testimage"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/qemu"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

const (
	bootTimeout     = 60 * time.Second
	shutdownTimeout = 30 * time.Second
)

// testImage builds (or takes from the cache) the tiny test guest.
func testImage(tb testing.TB) testimage.Image {
	tb.Helper()
	testutil.RequireVMs(tb)
	if err := testimage.CheckHost(); err != nil {
		tb.Fatalf("%s=1 but this host cannot build the test image: %v", testutil.EnvVMTests, err)
	}
	cache := os.Getenv("BANGER_TEST_CACHE")
	if cache == "" {
		cache = testimage.DefaultCacheDir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := testimage.Build(ctx, cache)
	if err != nil {
		tb.Fatalf("build test image: %v", err)
	}
	return img
}

// vmSpec returns a spec booting img from a private copy of its root disk.
func vmSpec(tb testing.TB, img testimage.Image) vmm.Spec {
	tb.Helper()
	dir := tb.TempDir()
	disk := filepath.Join(dir, "root.ext4")
	copyFile(tb, img.Rootfs, disk)
	return vmm.Spec{
		ID: "test", Name: "test", VCPUs: 1, MemoryMiB: 256,
		Kernel: img.Kernel, Initrd: img.Initrd, KernelArgs: "root=/dev/vda rw panic=-1",
		RootDisk:      disk,
		ControlSocket: filepath.Join(dir, "qmp.sock"),
		LogPath:       filepath.Join(dir, "console.log"),
		VMDir:         dir,
	}
}

func copyFile(tb testing.TB, src, dst string) {
	tb.Helper()
	in, err := os.Open(src)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		tb.Fatal(err)
	}
	if err := out.Close(); err != nil {
		tb.Fatal(err)
	}
}

// launch starts the VM; the test's cleanup kills QEMU if it is still there,
// so no process outlives the test, and runs the driver's Cleanup.
func launch(tb testing.TB, d *qemu.Driver, spec vmm.Spec) vmm.Process {
	tb.Helper()
	if err := d.Validate(spec); err != nil {
		tb.Fatalf("Validate: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	started := time.Now()
	p, err := d.Launch(ctx, spec)
	if err != nil {
		tb.Fatalf("Launch: %v\n%s", err, readLog(spec))
	}
	tb.Logf("launched pid %d in %.2fs", p.PID, time.Since(started).Seconds())
	tb.Cleanup(func() {
		if system.Alive(p.PID, p.StartTime) {
			tb.Errorf("qemu pid %d still running at the end of the test: killing it", p.PID)
			_ = system.Signal(p.PID, p.StartTime, syscall.SIGKILL)
			if !system.WaitExit(context.Background(), p.PID, p.StartTime, 10*time.Second) {
				tb.Errorf("qemu pid %d survived SIGKILL", p.PID)
			}
		}
		if err := d.Cleanup(context.Background(), spec); err != nil {
			tb.Errorf("Cleanup: %v", err)
		}
		if tb.Failed() {
			tb.Logf("console and qemu output:\n%s", readLog(spec))
		}
	})
	return p
}

func readLog(spec vmm.Spec) string {
	b, _ := os.ReadFile(spec.LogPath)
	return string(b)
}

// waitLog waits until the VM log holds want count times, the process exits
// or timeout passes.
func waitLog(spec vmm.Spec, p vmm.Process, want string, count int, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		b, _ := os.ReadFile(spec.LogPath)
		if bytes.Count(b, []byte(want)) >= count {
			return time.Since(start), nil
		}
		if !system.Alive(p.PID, p.StartTime) {
			b, _ = os.ReadFile(spec.LogPath)
			if bytes.Count(b, []byte(want)) >= count {
				return time.Since(start), nil
			}
			return 0, fmt.Errorf("qemu exited before %q appeared", want)
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("%q did not appear within %s", want, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDriverBootAndGracefulStop drives the QEMU driver through a real guest
// twice on the same disk: Launch, Boot, the boot line, Shutdown
// (Ctrl-Alt-Del), QEMU exits by itself, Cleanup removes the socket; the
// second boot counts 2 and the disk is clean after each stop.
func TestDriverBootAndGracefulStop(t *testing.T) {
	img := testImage(t)
	d := qemu.New()
	spec := vmSpec(t, img)
	ctx := context.Background()

	for boot := 1; boot <= 2; boot++ {
		p := launch(t, d, spec)
		started := time.Now()
		if err := d.Boot(ctx, spec); err != nil {
			t.Fatalf("boot %d: Boot: %v", boot, err)
		}
		if _, err := waitLog(spec, p, testimage.BootLine(boot), 1, bootTimeout); err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		t.Logf("boot %d: %q %.2fs after Boot", boot, testimage.BootLine(boot), time.Since(started).Seconds())
		if n, ok := testimage.LastBootCount([]byte(readLog(spec))); !ok || n != boot {
			t.Fatalf("boot %d: last boot count %d, %v", boot, n, ok)
		}

		sent := time.Now()
		if err := d.Shutdown(ctx, spec); err != nil {
			t.Fatalf("boot %d: Shutdown: %v", boot, err)
		}
		if _, err := waitLog(spec, p, testimage.ShutdownMarker, boot, shutdownTimeout); err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		if !system.WaitExit(ctx, p.PID, p.StartTime, shutdownTimeout) {
			t.Fatalf("boot %d: qemu still running %s after Ctrl-Alt-Del", boot, shutdownTimeout)
		}
		t.Logf("boot %d: qemu exited %.2fs after Shutdown", boot, time.Since(sent).Seconds())

		if err := d.Cleanup(ctx, spec); err != nil {
			t.Fatalf("boot %d: Cleanup: %v", boot, err)
		}
		if _, err := os.Stat(spec.ControlSocket); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("boot %d: QMP socket still there after Cleanup: %v", boot, err)
		}
		if err := d.Cleanup(ctx, spec); err != nil {
			t.Fatalf("boot %d: second Cleanup: %v", boot, err)
		}
		if out, err := exec.Command("e2fsck", "-fn", spec.RootDisk).CombinedOutput(); err != nil {
			t.Fatalf("boot %d: root disk not clean after the graceful stop: %v\n%s", boot, err, out)
		}
		if log := readLog(spec); strings.Contains(log, "initramfs: insmod") {
			t.Errorf("boot %d: a module failed to load:\n%s", boot, log)
		}
	}
}

// TestLaunchFailures: a spec QEMU cannot run gives an error and leaves no
// QEMU process and no socket behind.
func TestLaunchFailures(t *testing.T) {
	img := testImage(t)
	d := qemu.New()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("missing kernel", func(t *testing.T) {
		spec := vmSpec(t, img)
		spec.Kernel = filepath.Join(spec.VMDir, "no-such-vmlinuz")
		_, err := d.Launch(ctx, spec)
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want a failed precondition naming the missing file", err)
		}
		assertNoQEMU(t, spec)
	})
	t.Run("kernel qemu cannot load", func(t *testing.T) {
		spec := vmSpec(t, img)
		spec.Kernel = filepath.Join(spec.VMDir, "junk")
		if err := os.WriteFile(spec.Kernel, bytes.Repeat([]byte("junk"), 1024), 0o644); err != nil {
			t.Fatal(err)
		}
		// QEMU loads the kernel at start-up, fails and exits: Launch sees it.
		p, err := d.Launch(ctx, spec)
		if err == nil {
			_ = system.Signal(p.PID, p.StartTime, syscall.SIGKILL)
			system.WaitExit(ctx, p.PID, p.StartTime, 10*time.Second)
			t.Fatal("Launch with a junk kernel succeeded")
		}
		t.Logf("Launch: %v", err)
		assertNoQEMU(t, spec)
	})
	t.Run("missing disk", func(t *testing.T) {
		spec := vmSpec(t, img)
		spec.RootDisk = filepath.Join(spec.VMDir, "no-such-disk")
		if _, err := d.Launch(ctx, spec); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want not exist", err)
		}
		assertNoQEMU(t, spec)
	})
	t.Run("invalid spec", func(t *testing.T) {
		spec := vmSpec(t, img)
		spec.Kernel = ""
		if err := d.Validate(spec); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("Validate without kernel: %v", err)
		}
		spec = vmSpec(t, img)
		spec.MemoryMiB = 16
		if err := d.Validate(spec); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("Validate with 16 MiB: %v", err)
		}
	})
}

// assertNoQEMU fails if a process whose command line names the spec's
// control socket exists (killing it), or if the socket is left.
func assertNoQEMU(t *testing.T, spec vmm.Spec) {
	t.Helper()
	for _, pid := range qemuPIDs(spec.ControlSocket) {
		t.Errorf("qemu pid %d left running after a failed Launch", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := (qemu.New()).Cleanup(context.Background(), spec); err != nil {
		t.Errorf("Cleanup after a failed Launch: %v", err)
	}
}

func qemuPIDs(socket string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if slices.ContainsFunc(bytes.Split(cmdline, []byte{0}), func(arg []byte) bool {
			return bytes.Contains(arg, []byte(socket))
		}) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// BenchmarkBoot measures, per machine type under the driver, the wall time
// from Boot to the test guest's boot line and from Shutdown to QEMU's exit.
// Run with BANGER_VM_TESTS=1 go test -run '^$' -bench Boot -benchtime 7x.
// Figures: median, min and max in seconds, and failure counts.
func BenchmarkBoot(b *testing.B) {
	img := testImage(b)
	for _, machine := range []string{"q35", "pc"} {
		b.Run(machine, func(b *testing.B) {
			d := qemu.New()
			d.Machine = machine
			var boots, stops []float64
			failedBoots, failedStops := 0, 0
			for range b.N {
				spec := vmSpec(b, img)
				p := launch(b, d, spec)
				start := time.Now()
				if err := d.Boot(context.Background(), spec); err != nil {
					b.Fatalf("Boot: %v", err)
				}
				if _, err := waitLog(spec, p, testimage.BootLine(1), 1, bootTimeout); err != nil {
					failedBoots++
					b.Logf("%s: %v", machine, err)
					_ = system.Signal(p.PID, p.StartTime, syscall.SIGKILL)
					system.WaitExit(context.Background(), p.PID, p.StartTime, 10*time.Second)
					continue
				}
				boots = append(boots, time.Since(start).Seconds())
				start = time.Now()
				if err := d.Shutdown(context.Background(), spec); err != nil {
					b.Fatalf("Shutdown: %v", err)
				}
				if !system.WaitExit(context.Background(), p.PID, p.StartTime, shutdownTimeout) {
					failedStops++
					_ = system.Signal(p.PID, p.StartTime, syscall.SIGKILL)
					system.WaitExit(context.Background(), p.PID, p.StartTime, 10*time.Second)
					continue
				}
				stops = append(stops, time.Since(start).Seconds())
			}
			report(b, "boot", boots)
			report(b, "stop", stops)
			b.ReportMetric(float64(failedBoots), "boot-failures")
			b.ReportMetric(float64(failedStops), "stop-failures")
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

// TestConformance runs the driver suite against real QEMU booting the tiny
// test guest (under TCG on hosts without KVM). Opt-in: BANGER_VM_TESTS=1.
func TestConformance(t *testing.T) {
	img := testImage(t)
	vmmtest.RunConformance(t, func(t *testing.T) vmmtest.Target {
		return vmmtest.Target{
			Driver:          qemu.New(),
			Spec:            func(t *testing.T) vmm.Spec { return vmSpec(t, img) },
			BootMarker:      testimage.BootMarker,
			BootTimeout:     bootTimeout,
			ShutdownTimeout: shutdownTimeout,
		}
	})
}
