package initramfs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
)

type entry struct {
	name string
	mode cpio.FileMode
	body string // file content or symlink target
}

func (e entry) String() string { return fmt.Sprintf("%s %o %q", e.name, e.mode, e.body) }

func readArchive(t *testing.T, data []byte) []entry {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	r := cpio.NewReader(gz)
	var out []entry
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("cpio: %v", err)
		}
		if h.Uid != 0 || h.Guid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v, want 0 0 0", h.Name, h.Uid, h.Guid, h.ModTime)
		}
		body, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if h.Mode&cpio.ModeType == cpio.TypeSymlink {
			body = []byte(h.Linkname)
		}
		out = append(out, entry{h.Name, h.Mode, string(body)})
	}
	return out
}

func fixtureTree(t *testing.T, files ...string) (busybox, modDir string) {
	t.Helper()
	dir := t.TempDir()
	busybox = filepath.Join(dir, "busybox")
	if err := os.WriteFile(busybox, []byte("BUSYBOX"), 0o755); err != nil {
		t.Fatal(err)
	}
	modDir = filepath.Join(dir, "lib/modules/6.1.0-test")
	for _, f := range files {
		p := filepath.Join(modDir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("module "+filepath.Base(f)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return busybox, modDir
}

func TestBuildContents(t *testing.T) {
	deps, builtin := loadFixture(t)
	mods, err := Resolve(deps, builtin, "virtio_blk", "ext4", "virtiofs")
	if err != nil {
		t.Fatal(err)
	}
	// virtiofs pulls in fuse.ko.zst, which Build refuses; drop it for this test.
	mods = slices.DeleteFunc(mods, func(m string) bool { return strings.HasSuffix(m, ".zst") })
	busybox, modDir := fixtureTree(t, mods...)

	var buf bytes.Buffer
	err = Build(&buf, Spec{
		Init:          "#!/bin/sh\necho hi\n",
		Busybox:       busybox,
		Applets:       []string{"sh", "mount"},
		KernelVersion: "6.1.0-test",
		ModulesDir:    modDir,
		Modules:       mods,
	})
	if err != nil {
		t.Fatal(err)
	}
	const (
		dir  = cpio.TypeDir | 0o755
		exe  = cpio.TypeReg | 0o755
		reg  = cpio.TypeReg | 0o644
		link = cpio.TypeSymlink | 0o777
		kmod = "lib/modules/6.1.0-test/kernel/"
	)
	want := []entry{
		{"dev", dir, ""},
		{"proc", dir, ""},
		{"sys", dir, ""},
		{"newroot", dir, ""},
		{"bin", dir, ""},
		{"etc", dir, ""},
		{"init", exe, "#!/bin/sh\necho hi\n"},
		{"bin/busybox", exe, "BUSYBOX"},
		{"bin/sh", link, "busybox"},
		{"bin/mount", link, "busybox"},
		{"lib", dir, ""},
		{"lib/modules", dir, ""},
		{"lib/modules/6.1.0-test", dir, ""},
		{"lib/modules/6.1.0-test/kernel", dir, ""},
		{"lib/modules/6.1.0-test/kernel/drivers", dir, ""},
		{"lib/modules/6.1.0-test/kernel/drivers/virtio", dir, ""},
		{kmod + "drivers/virtio/virtio_ring.ko", reg, "module virtio_ring.ko"},
		{kmod + "drivers/virtio/virtio.ko", reg, "module virtio.ko"},
		{"lib/modules/6.1.0-test/kernel/drivers/block", dir, ""},
		{kmod + "drivers/block/virtio_blk.ko", reg, "module virtio_blk.ko"},
		{"lib/modules/6.1.0-test/kernel/fs", dir, ""},
		{"lib/modules/6.1.0-test/kernel/fs/fuse", dir, ""},
		{kmod + "fs/fuse/virtiofs.ko.xz", reg, "module virtiofs.ko.xz"},
		{"etc/initramfs-modules", reg, "/" + kmod + "drivers/virtio/virtio_ring.ko\n" +
			"/" + kmod + "drivers/virtio/virtio.ko\n" +
			"/" + kmod + "drivers/block/virtio_blk.ko\n" +
			"/" + kmod + "fs/fuse/virtiofs.ko.xz\n"},
	}
	got := readArchive(t, buf.Bytes())
	if !slices.Equal(got, want) {
		t.Errorf("archive contents differ")
		for i := range max(len(got), len(want)) {
			var g, w string
			if i < len(got) {
				g = got[i].String()
			}
			if i < len(want) {
				w = want[i].String()
			}
			mark := "  "
			if g != w {
				mark = "!="
			}
			t.Logf("%s got %-60s want %s", mark, g, w)
		}
	}

	// Same input, same bytes.
	var again bytes.Buffer
	if err := Build(&again, Spec{Init: "#!/bin/sh\necho hi\n", Busybox: busybox, Applets: []string{"sh", "mount"},
		KernelVersion: "6.1.0-test", ModulesDir: modDir, Modules: mods}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two builds of the same spec differ")
	}
}

func TestBuildDefaults(t *testing.T) {
	busybox, _ := fixtureTree(t)
	var buf bytes.Buffer
	if err := Build(&buf, Spec{Busybox: busybox}); err != nil {
		t.Fatal(err)
	}
	byName := map[string]entry{}
	for _, e := range readArchive(t, buf.Bytes()) {
		byName[e.name] = e
	}
	if e := byName["init"]; e.body != DefaultInit || e.mode != cpio.TypeReg|0o755 {
		t.Errorf("init: mode %o, default script %v", e.mode, e.body == DefaultInit)
	}
	for _, a := range DefaultApplets {
		if e := byName["bin/"+a]; e.mode != cpio.TypeSymlink|0o777 || e.body != "busybox" {
			t.Errorf("bin/%s: %v", a, e)
		}
	}
	if e, ok := byName["etc/initramfs-modules"]; !ok || e.body != "" {
		t.Errorf("module list: %v %v", e, ok)
	}
}

func TestBuildErrors(t *testing.T) {
	busybox, modDir := fixtureTree(t, "kernel/fs/fuse/fuse.ko.zst", "kernel/a.ko")
	for name, tc := range map[string]struct {
		spec Spec
		want error
	}{
		"no busybox":       {Spec{}, errdefs.ErrInvalidArgument},
		"missing busybox":  {Spec{Busybox: busybox + ".missing"}, os.ErrNotExist},
		"zstd module":      {Spec{Busybox: busybox, KernelVersion: "6.1.0-test", ModulesDir: modDir, Modules: []string{"kernel/fs/fuse/fuse.ko.zst"}}, errdefs.ErrNotSupported},
		"missing module":   {Spec{Busybox: busybox, KernelVersion: "6.1.0-test", ModulesDir: modDir, Modules: []string{"kernel/b.ko"}}, os.ErrNotExist},
		"escaping module":  {Spec{Busybox: busybox, KernelVersion: "6.1.0-test", ModulesDir: modDir, Modules: []string{"../x.ko"}}, errdefs.ErrInvalidArgument},
		"duplicate module": {Spec{Busybox: busybox, KernelVersion: "6.1.0-test", ModulesDir: modDir, Modules: []string{"kernel/a.ko", "kernel/a.ko"}}, errdefs.ErrInvalidArgument},
		"no kernel ver":    {Spec{Busybox: busybox, ModulesDir: modDir, Modules: []string{"kernel/a.ko"}}, errdefs.ErrInvalidArgument},
		"bad applet":       {Spec{Busybox: busybox, Applets: []string{"../sh"}}, errdefs.ErrInvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			err := Build(io.Discard, tc.spec)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestDefaultInitSyntax parses the init script with busybox sh, the shell
// the guest runs it with.
func TestDefaultInitSyntax(t *testing.T) {
	testutil.RequireTools(t, "busybox")
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(f, []byte(DefaultInit), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bb, "sh", "-n", f).CombinedOutput(); err != nil {
		t.Fatalf("busybox sh -n: %v\n%s", err, out)
	}
}

// TestDefaultInitApplets needs no busybox: it checks the script's commands
// against the applets Build links.
func TestDefaultInitApplets(t *testing.T) {
	// Every command the script runs must be an applet Build links (or a shell builtin).
	for _, cmd := range []string{"mount", "insmod", "switch_root", "findfs", "poweroff", "sleep", "sync", "umount", "mkdir", "cat", "ls",
		"chmod", "chown", "cp", "cpio", "dd", "mv", "rm", "stat"} {
		if !regexp.MustCompile(`(^|[\s(])` + cmd + `(\s|$)`).MatchString(DefaultInit) {
			t.Errorf("DefaultInit no longer uses %q: update this list", cmd)
		}
		if !slices.Contains(DefaultApplets, cmd) {
			t.Errorf("DefaultInit uses %q, not in DefaultApplets", cmd)
		}
	}
}
