package build

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
)

func TestSpecValidate(t *testing.T) {
	if err := (&Spec{}).Validate(); err != nil {
		t.Fatalf("the zero spec (all defaults) is invalid: %v", err)
	}
	ok := Spec{Release: "trixie", Packages: []string{"curl", "libstdc++6", "g++-12", "python3.11"}, SizeBytes: 4 << 30,
		CacheDir: "/var/lib/banger/cache/apt", WorkDir: "/var/lib/banger/tmp", Mirror: "https://mirror.example/debian"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for name, s := range map[string]Spec{
		"unknown release":     {Release: "jessie2"},
		"release with space":  {Release: "bookworm "},
		"bad package":         {Packages: []string{"curl", "Bad_Name"}},
		"package with shell":  {Packages: []string{"curl;rm"}},
		"package option":      {Packages: []string{"-oAPT::x=y"}},
		"one-letter package":  {Packages: []string{"a"}},
		"size too small":      {SizeBytes: 100 << 20},
		"negative size":       {SizeBytes: -1},
		"size absurd":         {SizeBytes: 1 << 50},
		"kernel not an image": {KernelPackage: "curl"},
		"mirror not a url":    {Mirror: "deb.debian.org"},
		"mirror scheme":       {Mirror: "ftp://deb.debian.org/debian"},
		"relative cache":      {CacheDir: "cache"},
		"cache with space":    {CacheDir: "/var/cache/my apt"},
		"work dir newline":    {WorkDir: "/tmp/x\ny"},
	} {
		t.Run(name, func(t *testing.T) {
			err := s.Validate()
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v, want invalid argument", err)
			}
			t.Log(err)
		})
	}
}

func TestBuildRejectsBadSpecBeforeWork(t *testing.T) {
	work := t.TempDir()
	called := false
	bd := testBuilder(t, func(Spec, string) (string, error) { called = true; return "", nil }, nil)
	_, err := bd.Build(context.Background(), Spec{Release: "hamm2", WorkDir: work}, filepath.Join(work, "out"), nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || called {
		t.Fatalf("err = %v, preflight called %v", err, called)
	}
	assertEmptyDir(t, work)
}

func TestManifestRoundTrip(t *testing.T) {
	m := Manifest{
		FormatVersion: ManifestVersion, Release: "bookworm", Recipe: Recipe(), Mirror: DefaultMirror, ExtraPackages: []string{"curl"},
		KernelPackage: DefaultKernelPackage, KernelPackageVersion: "6.1.153-1", KernelVersion: "6.1.0-39-cloud-amd64",
		KernelCompression: "lz4", KernelEntry: 0x1000000, PVHEntry: 0x1000850, KernelCmdline: KernelCmdline,
		InitramfsModules: []string{"kernel/drivers/virtio/virtio.ko"}, InitramfsFeatures: []string{api.InitramfsConfigDisk},
		SizeBytes: 2 << 30, ContentBytes: 300 << 20,
		BuiltAt: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), DurationSeconds: 41.5,
		Packages:  []Package{{Name: "sudo", Version: "1.9.13p3-1+deb12u1", Arch: "amd64"}, {Name: "base-files", Version: "12.4+deb12u7", Arch: "amd64"}},
		Artifacts: []Artifact{{Name: ArtifactRootfs, File: ArtifactRootfs, Size: 2 << 30, SHA256: strings.Repeat("ab", 32)}},
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, m) {
		t.Fatalf("round trip differs:\n got  %+v\n want %+v", *got, m)
	}
	for _, key := range []string{`"release":"bookworm"`, `"kernel_version":"6.1.0-39-cloud-amd64"`, `"sha256":"abab`, `"built_at":"2026-11-25T10:00:00Z"`, `"initramfs_features":["config-disk"]`} {
		if !strings.Contains(string(data), key) {
			t.Errorf("JSON lacks %s: %s", key, data)
		}
	}
	if a, ok := got.Artifact(ArtifactRootfs); !ok || a.Size != 2<<30 {
		t.Errorf("Artifact: %+v %v", a, ok)
	}
	if p, ok := got.Package("sudo"); !ok || p.Version != "1.9.13p3-1+deb12u1" {
		t.Errorf("Package: %+v %v", p, ok)
	}
}

// testBuilder is a builder whose host check is preflight and, if stages
// is not nil, whose build is stages.
func testBuilder(t *testing.T, preflight func(Spec, string) (string, error), stages []stage) *Builder {
	bd := New(slog.New(slog.NewTextHandler(t.Output(), nil)))
	bd.preflight = preflight
	if stages != nil {
		bd.stages = stages
	}
	return bd
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("%s is not empty: %v", dir, names)
	}
}

// A stage that fails after earlier stages wrote into the work dir (and the
// output dir) leaves no temporary directory and nothing in outDir.
func TestFailingStageLeavesNothing(t *testing.T) {
	bd := testBuilder(t, func(Spec, string) (string, error) { return "/bin/busybox", nil }, nil)
	boom := errors.New("boom")
	var events []Event
	for _, outExists := range []bool{false, true} {
		t.Run("out dir exists "+strconv.FormatBool(outExists), func(t *testing.T) {
			work, parent := t.TempDir(), t.TempDir()
			out := filepath.Join(parent, "img")
			if outExists {
				if err := os.Mkdir(out, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(out, "unrelated"), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			events = nil
			bd.stages = []stage{
				{StagePackages, func(b *builder, ctx context.Context) error {
					// A root tree as mmdebstrap leaves it, with a read-only dir.
					for _, d := range []string{"etc/ssh", "usr/lib/modules/6.1.0-test", "var/cache/apt/archives"} {
						if err := os.MkdirAll(filepath.Join(b.root, d), 0o755); err != nil {
							return err
						}
					}
					if err := os.WriteFile(filepath.Join(b.root, "etc/ssh/sshd_config"), []byte("x"), 0o644); err != nil {
						return err
					}
					return os.Chmod(filepath.Join(b.root, "etc/ssh"), 0o555)
				}},
				{StageKernel, func(b *builder, ctx context.Context) error {
					// Artifacts, in the work dir and already in outDir.
					if err := os.WriteFile(filepath.Join(b.out, ArtifactVmlinuz), []byte("k"), 0o644); err != nil {
						return err
					}
					if err := os.MkdirAll(b.outDir, 0o755); err != nil {
						return err
					}
					return os.WriteFile(filepath.Join(b.outDir, ArtifactVmlinux), []byte("k"), 0o644)
				}},
				{StageInitramfs, func(b *builder, ctx context.Context) error { return boom }},
				{StageFilesystem, func(b *builder, ctx context.Context) error {
					t.Error("the stage after the failing one ran")
					return nil
				}},
			}
			m, err := bd.Build(context.Background(), Spec{WorkDir: work}, out, func(e Event) { events = append(events, e) })
			if !errors.Is(err, boom) || m != nil {
				t.Fatalf("Build = %v, %v; want the stage's error", m, err)
			}
			if !strings.Contains(err.Error(), "stage initramfs") {
				t.Errorf("error does not name the stage: %v", err)
			}
			assertEmptyDir(t, work)
			if outExists {
				ents, _ := os.ReadDir(out)
				if len(ents) != 1 || ents[0].Name() != "unrelated" {
					t.Fatalf("out dir holds %v, want only the file that was there before", ents)
				}
			} else if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("out dir created by the failed build still exists: %v", err)
			}
			var seen []string
			for _, e := range events {
				seen = append(seen, e.Stage+" "+e.Status)
			}
			want := []string{"packages start", "packages done", "kernel start", "kernel done", "initramfs start"}
			if !slices.Equal(seen, want) {
				t.Errorf("events %v, want %v", seen, want)
			}
		})
	}
}

// Cancelling a build kills the whole process group of the running command
// (a child that would outlive its parent included), and cleans up.
func TestCancelKillsProcessGroup(t *testing.T) {
	bd := testBuilder(t, func(Spec, string) (string, error) { return "/bin/busybox", nil }, nil)
	work := t.TempDir()
	out := filepath.Join(t.TempDir(), "img")
	marker := "banger-build-test-" + strconv.Itoa(os.Getpid())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	bd.stages = []stage{{StagePackages, func(b *builder, ctx context.Context) error {
		close(started)
		// sh starts a background sleep (same group) and waits on another.
		return command{name: "sh", args: []string{"-c", `sleep 300 & exec sleep 301`, marker}}.run(ctx)
	}}}
	errc := make(chan error, 1)
	go func() {
		_, err := bd.Build(ctx, Spec{WorkDir: work}, out, nil)
		errc <- err
	}()
	<-started
	deadline := time.Now().Add(5 * time.Second)
	for len(pidsWithArg("301")) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want cancelled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Build did not return after cancel")
	}
	for _, arg := range []string{"300", "301"} {
		for _, pid := range pidsWithArg(arg) {
			if isOurSleep(pid) {
				t.Errorf("sleep %s (pid %d) survived the cancelled build", arg, pid)
			}
		}
	}
	assertEmptyDir(t, work)
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("out dir exists: %v", err)
	}
}

// pidsWithArg lists processes running "sleep arg" whose parent chain is
// ours (the test binary's process group members were children of it).
func pidsWithArg(arg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if string(cmdline) == "sleep\x00"+arg+"\x00" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isOurSleep: the process's group was started by this test binary (its
// pgid leader's parent is us, or it is a child of ours).
func isOurSleep(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(f) < 3 || f[0] == "Z" {
		return false
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid == os.Getpid() || ppid == 1
}

func TestMountsUnder(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b/c\011d`); got != "/tmp/a b/c\td" {
		t.Errorf("unescape: %q", got)
	}
	m, err := mountsUnder("/proc")
	if err != nil || !slices.Contains(m, "/proc") {
		t.Errorf("mountsUnder(/proc) = %v, %v", m, err)
	}
	dir := t.TempDir()
	if m, err := mountsUnder(dir); err != nil || len(m) != 0 {
		t.Errorf("mountsUnder(%s) = %v, %v", dir, m, err)
	}
	if err := removeWorkDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("work dir still there: %v", err)
	}
	// A directory with a mount below it is refused, not removed.
	if err := removeWorkDir("/sys"); err == nil || !strings.Contains(err.Error(), "still mounted") {
		t.Fatalf("removeWorkDir(/sys) = %v", err)
	}
}

func TestMmdebstrapArgs(t *testing.T) {
	b := &builder{spec: Spec{Packages: []string{"curl"}, CacheDir: "/var/cache/banger/apt"}.WithDefaults(),
		work: "/var/tmp/w", root: "/var/tmp/w/root"}
	args := b.mmdebstrapArgs("/var/tmp/w/guest")
	joined := strings.Join(args, "\n")
	for _, want := range []string{
		"--mount\n--propagation\nprivate\n--\nmmdebstrap\n--mode=root\n--variant=minbase",
		"--include=systemd-sysv,udev,kmod,openssh-server,iproute2,ca-certificates,sudo,tiny-initramfs,linux-image-cloud-amd64,curl",
		"--skip=essential/unlink",
		"--setup-hook=sync-in /var/cache/banger/apt/bookworm /var/cache/apt/",
		"--customize-hook=sync-out /var/cache/apt/archives /var/tmp/w/debs",
		"--customize-hook=sync-in /var/tmp/w/guest /",
		"\nbookworm\n/var/tmp/w/root\ndeb http://deb.debian.org/debian bookworm main\n" +
			"deb http://deb.debian.org/debian bookworm-updates main\n" +
			"deb http://deb.debian.org/debian-security bookworm-security main",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	// The only shell hook is fixed text.
	for _, a := range args {
		if h, ok := strings.CutPrefix(a, "--customize-hook="); ok && !strings.HasPrefix(h, "sync-") && h != `chroot "$1" /bin/sh /banger-customize.sh` {
			t.Errorf("unexpected hook %q", h)
		}
	}
	b.spec.CacheDir = ""
	if j := strings.Join(b.mmdebstrapArgs("/g"), " "); strings.Contains(j, "sync-out") || strings.Contains(j, "essential/unlink") {
		t.Errorf("no cache, yet cache hooks: %s", j)
	}
}

func TestStoreDebsPrunesSuperseded(t *testing.T) {
	work, cache := t.TempDir(), t.TempDir()
	b := &builder{spec: Spec{CacheDir: cache, Release: "bookworm"}, work: work}
	archives := filepath.Join(cache, "bookworm", "archives")
	for _, d := range []string{archives, filepath.Join(work, "debs")} {
		os.MkdirAll(d, 0o755)
	}
	for _, f := range []string{"sudo_1.0_amd64.deb", "sudo_0.9_i386.deb", "curl_7_amd64.deb", "lock"} {
		os.WriteFile(filepath.Join(archives, f), nil, 0o644)
	}
	for _, f := range []string{"sudo_1.1_amd64.deb", "tzdata_2025a_all.deb"} {
		os.WriteFile(filepath.Join(work, "debs", f), nil, 0o644)
	}
	if err := b.storeDebs(); err != nil {
		t.Fatal(err)
	}
	var got []string
	ents, _ := os.ReadDir(archives)
	for _, e := range ents {
		got = append(got, e.Name())
	}
	want := []string{"curl_7_amd64.deb", "lock", "sudo_0.9_i386.deb", "sudo_1.1_amd64.deb", "tzdata_2025a_all.deb"}
	if !slices.Equal(got, want) {
		t.Fatalf("cache holds %v, want %v", got, want)
	}
}

func TestExt4NeedAndKernelVersion(t *testing.T) {
	u := usage{bytes: 400 << 20, inodes: 20000}
	if need := ext4Need(u, 512<<20); need <= 512<<20 {
		t.Errorf("400 MiB of content fits in 512 MiB? need %d", need)
	}
	if need := ext4Need(u, 2<<30); need >= 2<<30 {
		t.Errorf("400 MiB of content does not fit in 2 GiB? need %d", need)
	}
	for kver, want := range map[string]bool{"5.10.0-30-cloud-amd64": true, "6.1.0-39-cloud-amd64": false, "5.15.0": false, "4.19.0-1": true} {
		if got, err := kernelBefore(kver, 5, 15); err != nil || got != want {
			t.Errorf("kernelBefore(%q) = %v, %v", kver, got, err)
		}
	}
}

func TestNoSpace(t *testing.T) {
	ce := &commandError{cmd: "mkfs.ext4", err: errors.New("exit status 1"), output: "__populate_fs: No space left on device while writing file"}
	err := noSpace(ce, "/var/lib/banger/tmp", 1<<30)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "no space left in /var/lib/banger/tmp: need about 1.0 GiB") {
		t.Fatalf("noSpace = %v", err)
	}
	other := errors.New("other")
	if got := noSpace(other, "/x", 1); got != other { //nolint:errorlint // identity: the very same error value comes back
		t.Fatal("noSpace changed an unrelated error")
	}
}

// A root too big for the requested size fails in the filesystem stage,
// before mkfs runs, with an invalid-argument error saying what is needed.
func TestSizeTooSmallForContent(t *testing.T) {
	bd := testBuilder(t, func(Spec, string) (string, error) { return "/bin/busybox", nil }, nil)
	work := t.TempDir()
	out := filepath.Join(t.TempDir(), "img")
	bd.stages = []stage{
		{StagePackages, func(b *builder, ctx context.Context) error {
			// 600 MiB of content (a sparse file: its apparent size counts).
			f, err := os.Create(filepath.Join(b.root, "big"))
			if err != nil {
				return err
			}
			defer f.Close()
			return f.Truncate(600 << 20)
		}},
		{StageFilesystem, (*builder).filesystem},
	}
	_, err := bd.Build(context.Background(), Spec{WorkDir: work, SizeBytes: 640 << 20}, out, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "too small for the image's content") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	assertEmptyDir(t, work)
}

// The builder logs to the logger it was given (the daemon's, so that its
// warnings reach --log-file), never to slog.Default().
func TestBuilderLogsToInjectedLogger(t *testing.T) {
	var buf strings.Builder
	bd := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	bd.preflight = func(Spec, string) (string, error) { return "/bin/busybox", nil }
	boom := errors.New("boom")
	bd.stages = []stage{
		{StagePackages, func(b *builder, ctx context.Context) error {
			b.log.Warn("image build: could not update the package cache")
			return nil
		}},
		{StageKernel, func(*builder, context.Context) error { return boom }},
	}
	if _, err := bd.Build(context.Background(), Spec{WorkDir: t.TempDir()}, filepath.Join(t.TempDir(), "img"), nil); !errors.Is(err, boom) {
		t.Fatalf("Build: %v", err)
	}
	for _, want := range []string{
		`level=WARN msg="image build: could not update the package cache" op=image.build`,
		`level=DEBUG msg="image build stage done" op=image.build stage=packages`,
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, buf.String())
		}
	}
}

// The builder writes its artifacts under the names internal/layout gives
// an image directory: after the daemon moves a build's output dir into
// place, layout.ImageDir finds every file the builder wrote.
func TestArtifactNamesAreLayouts(t *testing.T) {
	d := layout.ImageDir("/state/images/0123")
	want := []string{d.Kernel(), d.Vmlinux(), d.Initrd(), d.Rootfs()}
	var got []string
	for _, name := range ArtifactNames {
		got = append(got, filepath.Join(d.Path(), name))
	}
	if !slices.Equal(got, want) {
		t.Errorf("builder artifacts %v, layout's image files %v", got, want)
	}
	if filepath.Join(d.Path(), ManifestFile) != d.Manifest() {
		t.Errorf("builder manifest %s, layout's %s", ManifestFile, d.Manifest())
	}
	// The manifest lists the artifacts under those names too.
	m := Manifest{Artifacts: []Artifact{{Name: ArtifactInitrd, File: ArtifactInitrd}}}
	if a, ok := m.Artifact(filepath.Base(d.Initrd())); !ok || a.File != filepath.Base(d.Initrd()) {
		t.Errorf("manifest artifact lookup by layout name: %+v %v", a, ok)
	}
}
