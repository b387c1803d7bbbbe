package build_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/image/build"
	"github.com/banger-vm/banger/internal/image/vmlinux"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/testutil/testimage"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// imageCacheVersion changes when the builder's Go code changes what goes
// into an image (build.Recipe covers its files and lists).
const imageCacheVersion = "7"

const (
	buildTimeout    = 15 * time.Minute
	bootTimeout     = 150 * time.Second
	shutdownTimeout = 60 * time.Second
)

func testCacheRoot(t testing.TB) string {
	if c := os.Getenv("BANGER_TEST_CACHE"); c != "" {
		return c
	}
	return testimage.DefaultCacheDir
}

func requireBuildHost(t testing.TB) {
	t.Helper()
	testutil.RequireVMs(t)
	testutil.RequireTools(t, "mmdebstrap", "unshare", "debugfs", "dpkg-query", "busybox")
}

// defaultImage builds the default image once and keeps it in the test
// cache, keyed by the spec and imageCacheVersion: it is built into a
// temporary directory and renamed into place.
func defaultImage(t *testing.T) (dir string, m *build.Manifest) {
	t.Helper()
	requireBuildHost(t)
	root := testCacheRoot(t)
	spec := build.Spec{}.WithDefaults()
	key, _ := json.Marshal(struct {
		V      string
		Spec   build.Spec
		Recipe string
	}{imageCacheVersion, spec, build.Recipe()})
	sum := sha256.Sum256(key)
	dir = filepath.Join(root, "default-image", hex.EncodeToString(sum[:])[:16])
	if m, err := build.ReadManifest(dir); err == nil {
		t.Logf("default image from the test cache: %s (built %s in %.0fs)", dir, m.BuiltAt.Format(time.RFC3339), m.DurationSeconds)
		return dir, m
	}
	spec.CacheDir = filepath.Join(root, "apt")
	spec.WorkDir = filepath.Join(root, "tmp")
	tmp := filepath.Join(filepath.Dir(dir), ".tmp-"+filepath.Base(dir)+fmt.Sprint(os.Getpid()))
	os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	start := time.Now()
	m, err := build.New(slog.New(slog.NewTextHandler(t.Output(), nil))).Build(ctx, spec, tmp, func(e build.Event) {
		if e.Status != build.StatusProgress {
			t.Logf("%6.1fs %s %s %s", time.Since(start).Seconds(), e.Stage, e.Status, e.Detail)
		}
	})
	if err != nil {
		t.Fatalf("build the default image: %v", err)
	}
	t.Logf("default image built in %.1fs", time.Since(start).Seconds())
	assertCacheHolds(t, spec.CacheDir, spec.Release, m)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(spec.WorkDir); len(ents) != 0 {
		t.Errorf("work dir %s not empty after the build: %v", spec.WorkDir, ents)
	}
	return dir, m
}

// assertCacheHolds checks that the package cache holds every installed
// package: a second build of the same spec downloads nothing.
func assertCacheHolds(t *testing.T, cacheDir, release string, m *build.Manifest) {
	t.Helper()
	debs, _ := filepath.Glob(filepath.Join(cacheDir, release, "archives", "*.deb"))
	have := map[string]bool{}
	for _, d := range debs {
		have[filepath.Base(d)] = true
	}
	missing := 0
	for _, p := range m.Packages {
		v := p.Version
		if i := strings.IndexByte(v, ':'); i >= 0 {
			v = v[:i] + "%3a" + v[i+1:]
		}
		if !have[fmt.Sprintf("%s_%s_%s.deb", p.Name, v, p.Arch)] {
			missing++
			t.Logf("package cache lacks %s %s", p.Name, p.Version)
		}
	}
	if missing > 0 {
		t.Errorf("package cache lacks %d of %d packages", missing, len(m.Packages))
	}
}

func TestDefaultImage(t *testing.T) {
	dir, m := defaultImage(t)

	t.Run("manifest", func(t *testing.T) {
		if m.Release != build.DefaultRelease || m.KernelPackage != build.DefaultKernelPackage || m.Mirror != build.DefaultMirror {
			t.Errorf("manifest: release %q kernel package %q mirror %q", m.Release, m.KernelPackage, m.Mirror)
		}
		if !regexp.MustCompile(`^\d+\.\d+\.\d+-\d+-cloud-amd64$`).MatchString(m.KernelVersion) {
			t.Errorf("kernel version %q", m.KernelVersion)
		}
		for _, p := range []string{"systemd-sysv", "openssh-server", "sudo", "linux-image-" + m.KernelVersion, build.DefaultKernelPackage} {
			if pk, ok := m.Package(p); !ok || pk.Version == "" {
				t.Errorf("package %s not in the manifest", p)
			}
		}
		for _, p := range []string{"initramfs-tools", "busybox", "man-db"} {
			if _, ok := m.Package(p); ok {
				t.Errorf("package %s is in the image", p)
			}
		}
		if m.Recipe != build.Recipe() {
			t.Errorf("manifest recipe %q, this builder's %q", m.Recipe, build.Recipe())
		}
		if m.KernelPackageVersion == "" || m.DurationSeconds <= 0 || m.BuiltAt.IsZero() || m.KernelCmdline == "" {
			t.Errorf("manifest fields missing: %+v", m)
		}
		for _, name := range build.ArtifactNames {
			a, ok := m.Artifact(name)
			if !ok {
				t.Errorf("no artifact %s", name)
				continue
			}
			if got := fileSHA256(t, filepath.Join(dir, a.File)); got != a.SHA256 {
				t.Errorf("%s: sha256 %s, manifest says %s", name, got, a.SHA256)
			}
		}
		if a, _ := m.Artifact(build.ArtifactRootfs); a.Size != m.SizeBytes || a.Size != build.DefaultSizeBytes {
			t.Errorf("rootfs size %d, want %d", a.Size, build.DefaultSizeBytes)
		}
	})

	t.Run("vmlinux", func(t *testing.T) {
		f, err := os.Open(filepath.Join(dir, build.ArtifactVmlinux))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		info, err := vmlinux.Inspect(f)
		if err != nil {
			t.Fatal(err)
		}
		if info.PVHEntry == 0 || info.PVHEntry != m.PVHEntry {
			t.Errorf("vmlinux PVH entry %#x, manifest %#x", info.PVHEntry, m.PVHEntry)
		}
	})

	t.Run("rootfs", func(t *testing.T) {
		img := filepath.Join(dir, build.ArtifactRootfs)
		ls := debugfs(t, img, "ls -l /etc/ssh")
		if strings.Contains(ls, "ssh_host_") {
			t.Errorf("the image holds SSH host keys:\n%s", ls)
		}
		if !strings.Contains(ls, "sshd_config.d") {
			t.Errorf("debugfs listing of /etc/ssh looks wrong:\n%s", ls)
		}
		// stat prints "Mode:  0700" and "User:  1000   Group:  1000".
		for path, want := range map[string][]string{
			"/home/banger/.ssh":     {`Mode:\s+0700`, `User:\s+1000\s+Group:\s+1000`},
			"/etc/sudoers.d/banger": {`Mode:\s+0440`, `User:\s+0\s+Group:\s+0`},
			"/etc/machine-id":       {`Size: 0\b`},
			"/usr/bin/sudo":         {`Mode:\s+04755`},
		} {
			st := debugfs(t, img, "stat "+path)
			for _, re := range want {
				if !regexp.MustCompile(re).MatchString(st) {
					t.Errorf("%s: want %s in:\n%s", path, re, st)
				}
			}
		}
		if boot := debugfs(t, img, "ls /boot"); strings.Contains(boot, "vmlinuz") || strings.Contains(boot, "initrd") {
			t.Errorf("/boot still holds a kernel or initrd:\n%s", boot)
		}
		if mods := debugfs(t, img, "ls /usr/lib/modules/"+m.KernelVersion); !strings.Contains(mods, "modules.dep") {
			t.Errorf("/lib/modules/%s: %s", m.KernelVersion, mods)
		}
		if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
			t.Errorf("e2fsck -fn: %v\n%s", err, out)
		}
	})

	t.Run("boot", func(t *testing.T) {
		bootImage(t, dir, m, build.ArtifactVmlinuz)
	})
}

// bootImage boots a copy of the image under QEMU (TCG, q35, 2 vCPUs,
// 1 GiB) through the driver, waits for the multi-user target, the serial
// getty and sshd, then presses Ctrl-Alt-Del and waits for QEMU to exit.
func bootImage(t *testing.T, dir string, m *build.Manifest, kernel string) {
	vmDir := t.TempDir()
	disk := filepath.Join(vmDir, "root.ext4")
	if out, err := exec.Command("cp", "--sparse=always", filepath.Join(dir, build.ArtifactRootfs), disk).CombinedOutput(); err != nil {
		t.Fatalf("copy rootfs: %v\n%s", err, out)
	}
	spec := vmm.Spec{
		ID: "img", Name: "img", VCPUs: 2, MemoryMiB: 1024,
		Kernel:        filepath.Join(dir, kernel),
		Initrd:        filepath.Join(dir, build.ArtifactInitrd),
		KernelArgs:    strings.TrimPrefix(m.KernelCmdline, "console=ttyS0 "),
		RootDisk:      disk,
		ControlSocket: filepath.Join(vmDir, "qmp.sock"),
		LogPath:       filepath.Join(vmDir, "console.log"),
		VMDir:         vmDir,
	}
	d := qemu.New()
	if err := d.Validate(spec); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := d.Launch(ctx, spec)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	t.Cleanup(func() {
		if system.Alive(p.PID, p.StartTime) {
			_ = system.Signal(p.PID, p.StartTime, syscall.SIGKILL)
			if !system.WaitExit(context.Background(), p.PID, p.StartTime, 10*time.Second) {
				t.Errorf("qemu pid %d survived SIGKILL", p.PID)
			}
		}
		_ = d.Cleanup(context.Background(), spec)
		if t.Failed() {
			log, _ := os.ReadFile(spec.LogPath)
			t.Logf("console:\n%s", log)
		}
	})
	start := time.Now()
	if err := d.Boot(ctx, spec); err != nil {
		t.Fatalf("Boot: %v", err)
	}
	multiUser := regexp.MustCompile(`Reached target.*(Multi-User System|Graphical Interface)`)
	for _, w := range []struct {
		what string
		re   *regexp.Regexp
	}{
		{"multi-user target", multiUser},
		{"sshd", regexp.MustCompile(`Started.*OpenBSD Secure Shell server`)},
		{"serial getty", regexp.MustCompile(`(?m)^banger login: `)},
	} {
		if err := waitConsole(spec, p, w.re, start.Add(bootTimeout)); err != nil {
			t.Fatalf("%s: %v", w.what, err)
		}
		t.Logf("%s after %.1fs", w.what, time.Since(start).Seconds())
	}
	log, _ := os.ReadFile(spec.LogPath)
	if bytes.Contains(log, []byte("FAILED")) {
		t.Errorf("a unit failed during boot")
	}
	if bytes.Contains(log, []byte("Ordering cycle")) {
		t.Errorf("systemd found an ordering cycle")
	}
	if bytes.Contains(log, []byte("initramfs: insmod")) {
		t.Errorf("a module of the initramfs failed to load")
	}

	sent := time.Now()
	if err := d.Shutdown(ctx, spec); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !system.WaitExit(ctx, p.PID, p.StartTime, shutdownTimeout) {
		t.Fatalf("qemu still running %s after Ctrl-Alt-Del", shutdownTimeout)
	}
	t.Logf("qemu exited %.1fs after Ctrl-Alt-Del", time.Since(sent).Seconds())
	if err := d.Cleanup(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("e2fsck", "-fn", disk).CombinedOutput(); err != nil {
		t.Errorf("root disk not clean after the graceful stop: %v\n%s", err, out)
	}
}

func waitConsole(spec vmm.Spec, p vmm.Process, re *regexp.Regexp, deadline time.Time) error {
	for {
		log, _ := os.ReadFile(spec.LogPath)
		if re.Match(log) {
			return nil
		}
		if !system.Alive(p.PID, p.StartTime) {
			return fmt.Errorf("qemu exited before %q appeared", re)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%q did not appear in time", re)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", request, err, out)
	}
	return string(out)
}

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// BenchmarkBuild builds the default image with an empty package cache
// (cold), then again with the cache the cold build filled (warm), and
// reports the seconds of each build and of its packages stage. Run:
// BANGER_VM_TESTS=1 go test -run '^$' -bench Build -benchtime 1x ./internal/image/build
func BenchmarkBuild(b *testing.B) {
	requireBuildHost(b)
	root := b.TempDir()
	cache := filepath.Join(root, "apt")
	for _, phase := range []string{"cold", "warm"} {
		b.Run(phase, func(b *testing.B) {
			for i := range b.N {
				if phase == "cold" {
					os.RemoveAll(cache)
				}
				out := filepath.Join(root, fmt.Sprintf("%s-%d", phase, i))
				var pkgStart, pkgDone time.Time
				ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
				start := time.Now()
				_, err := build.New(slog.New(slog.NewTextHandler(b.Output(), nil))).Build(ctx, build.Spec{CacheDir: cache, WorkDir: filepath.Join(root, "tmp")}, out, func(e build.Event) {
					if e.Stage == build.StagePackages && e.Status == build.StatusStart {
						pkgStart = time.Now()
					}
					if e.Stage == build.StagePackages && e.Status == build.StatusDone {
						pkgDone = time.Now()
					}
				})
				took := time.Since(start)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(took.Seconds(), "s/build")
				b.ReportMetric(pkgDone.Sub(pkgStart).Seconds(), "s/packages")
				os.RemoveAll(out)
			}
		})
	}
}

// TestCancelRealBuild cancels a real build while dpkg installs packages:
// Build returns the cancellation, and no process, mount or file of the
// build is left.
func TestCancelRealBuild(t *testing.T) {
	requireBuildHost(t)
	root := testCacheRoot(t)
	work := t.TempDir()
	out := filepath.Join(t.TempDir(), "img")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	var cancelledAt string
	_, err := build.New(slog.New(slog.NewTextHandler(t.Output(), nil))).Build(ctx, build.Spec{CacheDir: filepath.Join(root, "apt"), WorkDir: work}, out, func(e build.Event) {
		// mmdebstrap's second install phase: apt and dpkg run in the root.
		if cancelledAt == "" && e.Stage == build.StagePackages && strings.Contains(e.Detail, "installing remaining packages") {
			cancelledAt = e.Detail
			go func() {
				time.Sleep(3 * time.Second)
				cancel()
			}()
		}
	})
	if cancelledAt == "" {
		t.Fatalf("the build never reached the install phase: %v", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want cancelled", err)
	}
	t.Logf("cancelled 3s after %q: %v", cancelledAt, err)
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Errorf("work dir %s holds %v", work, ents)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("out dir: %v", err)
	}
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mountinfo), work) {
		t.Errorf("mounts left under %s:\n%s", work, mountinfo)
	}
	// No process runs in (or from) the build's tree.
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, link := range []string{"root", "cwd", "exe"} {
			if target, err := os.Readlink(filepath.Join(p, link)); err == nil && strings.HasPrefix(target, work) {
				cmd, _ := os.ReadFile(filepath.Join(p, "cmdline"))
				t.Errorf("process %s (%s) left with %s %s", filepath.Base(p), bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}), link, target)
			}
		}
	}
}
