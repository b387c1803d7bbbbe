package firecracker

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
)

// The command line follows jailer.md's "Jailer Usage", and its example's
// layout: /srv/jailer/firecracker/<id>/root.
func TestJailerCommandLine(t *testing.T) {
	const id = "551e7604-e35c-42b3-b825-416853441234"
	j := jail{base: "/srv/jailer", execFile: "/usr/bin/firecracker", id: id, uid: 123, gid: 100}
	got := j.args([]string{"--api-sock", jailAPISock})
	want := []string{
		"--id", id,
		"--exec-file", "/usr/bin/firecracker",
		"--uid", "123",
		"--gid", "100",
		"--cgroup-version", "2",
		"--chroot-base-dir", "/srv/jailer",
		"--",
		"--api-sock", "/api.socket",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("jailer args\n got %q\nwant %q", got, want)
	}
	// Only flags jailer.md documents, before "--"; Firecracker's after it.
	documented := map[string]bool{
		"--id": true, "--exec-file": true, "--uid": true, "--gid": true, "--cgroup-version": true,
		"--cgroup": true, "--parent-cgroup": true, "--chroot-base-dir": true, "--netns": true,
		"--resource-limit": true, "--daemonize": true, "--new-pid-ns": true,
	}
	sep := slices.Index(got, "--")
	for i := 0; i < sep; i += 2 {
		if !documented[got[i]] {
			t.Errorf("undocumented jailer flag %q", got[i])
		}
	}
	// --daemonize or --new-pid-ns would give Firecracker another pid than
	// the one spawned, and --daemonize would send the console to /dev/null.
	for _, f := range []string{"--daemonize", "--new-pid-ns"} {
		if slices.Contains(got, f) {
			t.Errorf("%s must not be passed", f)
		}
	}
	if j.dir() != "/srv/jailer/firecracker/"+id || j.root() != "/srv/jailer/firecracker/"+id+"/root" {
		t.Errorf("jail dir %s, root %s", j.dir(), j.root())
	}
	if got := j.host(jailAPISock); got != "/srv/jailer/firecracker/"+id+"/root/api.socket" {
		t.Errorf("api socket seen from the host: %s", got)
	}
	// <exec_file_name> is the file name of --exec-file, whatever its directory.
	j.execFile = "/opt/fc/firecracker-v1.16.1-x86_64"
	if j.dir() != "/srv/jailer/firecracker-v1.16.1-x86_64/"+id {
		t.Errorf("jail dir %s", j.dir())
	}
}

// The driver's whole command: unjailed Firecracker, or the jailer with
// Firecracker's arguments after "--" and paths inside the jail.
func TestCommand(t *testing.T) {
	spec := vmm.Spec{ID: testID, ControlSocket: "/run/banger/fc-01234567.sock"}
	d := New(Config{Jailer: JailerOff})
	h := host{binary: "/usr/bin/firecracker", jailer: "/usr/bin/jailer"}
	path, args := d.command(h, spec, nil)
	if path != "/usr/bin/firecracker" || !slices.Equal(args, []string{"--id", testID, "--api-sock", spec.ControlSocket}) {
		t.Errorf("unjailed: %s %q", path, args)
	}
	j := &jail{base: "/var/lib/banger/jailer", execFile: "/usr/bin/firecracker", id: testID, uid: 1, gid: 2}
	path, args = d.command(h, spec, j)
	if path != "/usr/bin/jailer" || args[len(args)-3] != "--" || args[len(args)-1] != "/api.socket" {
		t.Errorf("jailed: %s %q", path, args)
	}
	p := pathsFor(vmm.Spec{Kernel: "/k", Initrd: "/i", RootDisk: "/d", VsockPath: "/v"}, j)
	if p != (vmPaths{apiSock: "/api.socket", vsock: "/vsock.sock", kernel: "/vmlinux", initrd: "/initrd", rootfs: "/rootfs"}) {
		t.Errorf("jailed paths %+v", p)
	}
}

func TestParseJailerMode(t *testing.T) {
	for in, want := range map[string]JailerMode{"": JailerAuto, "auto": JailerAuto, "on": JailerOn, "off": JailerOff} {
		if got, err := ParseJailerMode(in); err != nil || got != want {
			t.Errorf("ParseJailerMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseJailerMode("yes"); errdefs.ClassOf(err) != errdefs.ClassInvalidArgument {
		t.Errorf("ParseJailerMode(yes) = %v", err)
	}
}

// The jail is built for real in a temporary chroot base (no jailer needed)
// and Cleanup removes it, leaving the VM's disk and the image alone.
func TestJailLayoutAndCleanup(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{jailer: JailerOn})
	j, err := h.drv.jail(h.spec)
	if err != nil || j == nil {
		t.Fatalf("jail: %v, %v", j, err)
	}
	if j.dir() != h.jailDir() {
		t.Fatalf("jail dir %s, want %s", j.dir(), h.jailDir())
	}
	// A jail left by an earlier run is replaced.
	if err := os.MkdirAll(filepath.Join(j.root(), "stale"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := h.drv.prepareJail(h.spec, j); err != nil {
		t.Fatal(err)
	}
	checkJail(t, h, j.root())
	if _, err := os.Stat(filepath.Join(j.root(), "stale")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a stale jail was not replaced")
	}
	for range 2 {
		if err := h.drv.Cleanup(ctx(t), h.spec); err != nil {
			t.Fatal(err)
		}
	}
	checkJailGone(t, h)
	// Cleanup finds the jail even when the driver no longer jails.
	if err := h.drv.prepareJail(h.spec, j); err != nil {
		t.Fatal(err)
	}
	if err := h.driver(Config{Jailer: JailerOff}).Cleanup(ctx(t), h.spec); err != nil {
		t.Fatal(err)
	}
	checkJailGone(t, h)
}

// Image files the jail user cannot read are copied, never re-owned: other
// VMs share them.
func TestJailCopiesUnreadableImageFiles(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	h := newHarness(t, opts{jailer: JailerOn})
	if err := os.Chmod(h.spec.Kernel, 0o600); err != nil { // root's only
		t.Fatal(err)
	}
	j, err := h.drv.jail(h.spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.drv.prepareJail(h.spec, j); err != nil {
		t.Fatal(err)
	}
	jk := filepath.Join(j.root(), "vmlinux")
	fi, err := os.Stat(jk)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := os.Stat(h.spec.Kernel)
	st := fi.Sys().(*syscall.Stat_t)
	if os.SameFile(fi, orig) || int(st.Uid) != j.uid || int(st.Gid) != j.gid || fi.Mode().Perm() != 0o400 {
		t.Errorf("kernel in jail: same file %v, owner %d:%d, mode %v; want a 0400 copy owned by %d:%d", os.SameFile(fi, orig), st.Uid, st.Gid, fi.Mode().Perm(), j.uid, j.gid)
	}
	a, _ := os.ReadFile(jk)
	b, _ := os.ReadFile(h.spec.Kernel)
	if !bytes.Equal(a, b) {
		t.Error("the copy differs from the kernel")
	}
	if ost := orig.Sys().(*syscall.Stat_t); ost.Uid != 0 || orig.Mode().Perm() != 0o600 {
		t.Error("the image kernel was re-owned")
	}
	if err := h.drv.Cleanup(ctx(t), h.spec); err != nil {
		t.Fatal(err)
	}
	checkJailGone(t, h)
}

// Across filesystems: image files are copied; the disk cannot be, and
// Launch says why.
func TestJailAcrossFilesystems(t *testing.T) {
	t.Parallel()
	other, err := os.MkdirTemp("/dev/shm", "fc")
	if err != nil {
		skipUnlessOptedIn(t, "needs a second filesystem at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	h := newHarness(t, opts{jailer: JailerOn})
	a, _ := os.Stat(other)
	b, _ := os.Stat(h.dir)
	if a.Sys().(*syscall.Stat_t).Dev == b.Sys().(*syscall.Stat_t).Dev {
		skipUnlessOptedIn(t, "needs a second filesystem: /dev/shm is on the same filesystem as the temp dir %s", h.dir)
	}
	kernel := filepath.Join(other, "vmlinux")
	writeFile(t, kernel, elfKernel(hostMachine()), 0o644)
	spec := h.spec
	spec.Kernel = kernel
	j, err := h.drv.jail(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.drv.prepareJail(spec, j); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(j.root(), "vmlinux"))
	if err != nil || fi.Sys().(*syscall.Stat_t).Dev == a.Sys().(*syscall.Stat_t).Dev {
		t.Errorf("the kernel from another filesystem must be copied into the jail: %v", err)
	}

	disk := filepath.Join(other, "rootfs.ext4")
	writeFile(t, disk, []byte("disk"), 0o600)
	spec.RootDisk = disk
	_, err = h.drv.Launch(ctx(t), spec)
	if errdefs.ClassOf(err) != errdefs.ClassFailedPrecondition || !strings.Contains(err.Error(), "another filesystem") {
		t.Errorf("Launch with the disk on another filesystem: %v", err)
	}
	if len(h.execs()) != 0 {
		t.Error("Launch started a process with an unusable jail")
	}
	checkJailGone(t, h)
}

// skipUnlessOptedIn skips a test the host cannot run, unless the real-host
// tests were asked for: then the missing piece fails it, so an opted-in run
// never passes by skipping.
func skipUnlessOptedIn(t *testing.T, format string, args ...any) {
	t.Helper()
	if testutil.OptedIn() {
		t.Fatalf(testutil.EnvVMTests+"=1 but the host cannot run this test: "+format, args...)
	}
	t.Skipf(format, args...)
}

// Each VM runs as its own user, UIDBase + (vsock CID & 0xffff): two VMs
// never share one, and the id follows the guest address the CID encodes.
func TestJailUserPerVM(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{}) // builds no jail: no root needed
	d := h.driver(Config{Jailer: JailerOn})
	a, b := h.spec, h.spec
	a.ID, a.VsockCID = "vm-a", 0xac1e0002 // 172.30.0.2, as network.CIDFor derives it
	b.ID, b.VsockCID = "vm-b", 0xac1e0107 // 172.30.1.7
	for _, tc := range []struct {
		spec vmm.Spec
		want int
	}{{a, DefaultUIDBase + 2}, {b, DefaultUIDBase + 0x107}} {
		uid, gid := d.RunAs(tc.spec)
		if uid != tc.want || gid != tc.want {
			t.Errorf("RunAs(cid %#x) = %d:%d, want %d:%d", tc.spec.VsockCID, uid, gid, tc.want, tc.want)
		}
		j, err := d.jail(tc.spec)
		if err != nil || j.uid != tc.want || j.gid != tc.want {
			t.Fatalf("jail(cid %#x) = %+v, %v", tc.spec.VsockCID, j, err)
		}
		args := j.args(nil)
		if i := slices.Index(args, "--uid"); i < 0 || args[i+1] != strconv.Itoa(tc.want) {
			t.Errorf("jailer args %q lack --uid %d", args, tc.want)
		}
		if i := slices.Index(args, "--gid"); i < 0 || args[i+1] != strconv.Itoa(tc.want) {
			t.Errorf("jailer args %q lack --gid %d", args, tc.want)
		}
	}
	ua, _ := d.RunAs(a)
	ub, _ := d.RunAs(b)
	if ua == ub {
		t.Errorf("two VMs share uid %d", ua)
	}
	if uid, gid := h.driver(Config{Jailer: JailerOn, UIDBase: 200000}).RunAs(b); uid != 200000+0x107 || gid != uid {
		t.Errorf("RunAs with uid base 200000 = %d:%d", uid, gid)
	}

	// Unjailed, Firecracker runs as the daemon: root.
	if uid, gid := h.drv.RunAs(a); uid != 0 || gid != 0 {
		t.Errorf("unjailed RunAs = %d:%d, want 0:0", uid, gid)
	}

	// Ids out of range, or no id of the VM's own, are refused before
	// anything starts; RunAs then says root, and Launch refuses anyway.
	noCID := a
	noCID.VsockPath, noCID.VsockCID = "", 0
	for _, tc := range []struct {
		name string
		cfg  Config
		spec vmm.Spec
		want string
	}{
		{"negative base", Config{Jailer: JailerOn, UIDBase: -1}, a, "uid base -1"},
		{"base past 2^31", Config{Jailer: JailerOn, UIDBase: 1<<31 - 0xffff}, a, "uid base"},
		{"no cid", Config{Jailer: JailerOn}, noCID, "needs a vsock cid"},
	} {
		d := h.driver(tc.cfg)
		err := d.Validate(tc.spec)
		if errdefs.ClassOf(err) != errdefs.ClassInvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want invalid argument with %q", tc.name, err, tc.want)
		}
		if uid, gid := d.RunAs(tc.spec); uid != 0 || gid != 0 {
			t.Errorf("%s: RunAs = %d:%d, want 0:0", tc.name, uid, gid)
		}
	}
	// The largest base whose ids all stay below 2^31 is accepted.
	if err := h.driver(Config{Jailer: JailerOn, UIDBase: 1<<31 - 1 - 0xffff}).Validate(b); err != nil {
		t.Errorf("uid base 2^31-1-0xffff: %v", err)
	}
}

// Cleanup gives the VM's disk back to root, whom the daemon created it as,
// through the jail or, with the jail gone, directly; and does so again
// when run again.
func TestCleanupGivesDiskBack(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{jailer: JailerOn})
	owner := func() (uint32, uint32) {
		t.Helper()
		fi, err := os.Stat(h.spec.RootDisk)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid
	}
	if u, g := owner(); u != 0 || g != 0 {
		t.Fatalf("the harness disk is owned by %d:%d, want 0:0", u, g)
	}
	j, err := h.drv.jail(h.spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.drv.prepareJail(h.spec, j); err != nil {
		t.Fatal(err)
	}
	if u, g := owner(); int(u) != j.uid || int(g) != j.gid {
		t.Fatalf("disk lent to %d:%d, want the jail user %d:%d", u, g, j.uid, j.gid)
	}
	for range 2 {
		if err := h.drv.Cleanup(ctx(t), h.spec); err != nil {
			t.Fatal(err)
		}
		if u, g := owner(); u != 0 || g != 0 {
			t.Errorf("after Cleanup the disk is owned by %d:%d, want 0:0", u, g)
		}
	}
	checkJailGone(t, h)

	// No jail left to go through (a retried Launch replaced it and failed).
	if err := os.Chown(h.spec.RootDisk, j.uid, j.gid); err != nil {
		t.Fatal(err)
	}
	if err := h.drv.Cleanup(ctx(t), h.spec); err != nil {
		t.Fatal(err)
	}
	if u, g := owner(); u != 0 || g != 0 {
		t.Errorf("without a jail, Cleanup left the disk owned by %d:%d, want 0:0", u, g)
	}
}
