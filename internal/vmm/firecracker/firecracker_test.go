package firecracker

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker/fctest"
)

func TestStartStop(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{})
	c := ctx(t)
	proc, err := h.drv.Launch(c, h.spec)
	if err != nil {
		t.Fatal(err)
	}
	if !system.Alive(proc.PID, proc.StartTime) {
		t.Fatal("Launch returned but the process is not running")
	}
	if reqs := h.requests(); reqs[len(reqs)-1].Path != "/entropy" {
		t.Fatalf("Launch must configure and not boot; last request %s %s", reqs[len(reqs)-1].Method, reqs[len(reqs)-1].Path)
	}
	if err := h.drv.Boot(c, h.spec); err != nil {
		t.Fatal(err)
	}
	h.golden("start")
	h.assertSpecClean()

	// The vsock device listens where the daemon will connect.
	conn, err := net.Dial("unix", h.spec.VsockPath)
	if err != nil {
		t.Fatalf("vsock socket: %v", err)
	}
	conn.Close()

	if err := h.drv.Shutdown(c, h.spec); err != nil {
		t.Fatal(err)
	}
	if !system.WaitExit(c, proc.PID, proc.StartTime, 5*time.Second) {
		t.Fatal("the VM did not power off after Ctrl-Alt-Del")
	}
	reqs := h.requests()
	if last := reqs[len(reqs)-1]; last.Path != "/actions" || !strings.Contains(string(last.Body), "SendCtrlAltDel") {
		t.Fatalf("Shutdown sent %s %s %s", last.Method, last.Path, last.Body)
	}
	// Firecracker leaves its sockets behind; Cleanup removes them, twice.
	for _, p := range []string{h.spec.ControlSocket, h.spec.VsockPath} {
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("expected %s left by the exited VMM: %v", p, err)
		}
	}
	for range 2 {
		if err := h.drv.Cleanup(c, h.spec); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{h.spec.ControlSocket, h.spec.VsockPath} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s survived Cleanup: %v", p, err)
		}
	}
	log, _ := os.ReadFile(h.spec.LogPath)
	for _, want := range []string{fctest.ConsoleBoot, fctest.ConsoleReboot} {
		if !strings.Contains(string(log), want) {
			t.Errorf("vm log lacks the console line %q:\n%s", want, log)
		}
	}
}

func TestStartStopJailed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{jailer: JailerOn})
	c := ctx(t)
	proc, err := h.drv.Launch(c, h.spec)
	if err != nil {
		t.Fatal(err)
	}
	// The jailer execs Firecracker in place: one pid for both.
	ex := h.execs()
	if len(ex) != 2 || ex[0].Prog != "jailer" || ex[1].Prog != "firecracker" || ex[0].PID != proc.PID || ex[1].PID != proc.PID {
		t.Fatalf("want the jailer then firecracker as pid %d, got %+v", proc.PID, ex)
	}
	root := filepath.Join(h.jailDir(), "root")
	checkJail(t, h, root)
	for link, target := range map[string]string{h.spec.ControlSocket: jailAPISock, h.spec.VsockPath: jailVsock} {
		if got, err := os.Readlink(link); err != nil || got != filepath.Join(root, target) {
			t.Errorf("%s -> %q (%v), want a link into the jail", link, got, err)
		}
	}
	if err := h.drv.Boot(c, h.spec); err != nil {
		t.Fatal(err)
	}
	h.golden("start-jailer")
	h.assertSpecClean()
	if conn, err := net.Dial("unix", h.spec.VsockPath); err != nil {
		t.Errorf("vsock through the link: %v", err)
	} else {
		conn.Close()
	}
	if p, _ := h.drv.VsockListenPath(h.spec, 1024); p != filepath.Join(root, "vsock.sock_1024") {
		t.Errorf("guest-initiated vsock listener path %q", p)
	}
	if err := h.drv.Shutdown(c, h.spec); err != nil {
		t.Fatal(err)
	}
	if !system.WaitExit(c, proc.PID, proc.StartTime, 5*time.Second) {
		t.Fatal("the VM did not power off after Ctrl-Alt-Del")
	}
	if err := h.drv.Cleanup(c, h.spec); err != nil {
		t.Fatal(err)
	}
	checkJailGone(t, h)
}

// With firecracker a symlink to a differently named release file (a name
// shorter than firecracker-v1.16.1-x86_64: the jailed vsock path under the
// test's temporary dir would pass the unix socket limit), the
// jailer names the jail after the resolved file: the driver builds, links
// into and removes that jail, and leaves none under the link's name.
func TestStartStopJailedThroughSymlink(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{jailer: JailerOn, release: "firecracker-v1.16.1"})
	c := ctx(t)
	proc, err := h.drv.Launch(c, h.spec)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(h.dir, "jail", "firecracker-v1.16.1", testID); h.jailDir() != want {
		t.Fatalf("test harness: jail dir %s, want %s", h.jailDir(), want)
	}
	root := filepath.Join(h.jailDir(), "root")
	checkJail(t, h, root)
	if err := h.drv.Boot(c, h.spec); err != nil {
		t.Fatal(err)
	}
	if err := h.drv.Shutdown(c, h.spec); err != nil {
		t.Fatal(err)
	}
	if !system.WaitExit(c, proc.PID, proc.StartTime, 5*time.Second) {
		t.Fatal("the VM did not power off after Ctrl-Alt-Del")
	}
	if err := h.drv.Cleanup(c, h.spec); err != nil {
		t.Fatal(err)
	}
	checkJailGone(t, h)
	if _, err := os.Lstat(filepath.Join(h.dir, "jail", "firecracker", testID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a jail under the symlink's name exists: %v", err)
	}
	h.assertSpecClean()
}

// checkJail checks a jail built for h's VM against jailer.md's layout.
func checkJail(t *testing.T, h *harness, root string) {
	t.Helper()
	same := func(a, b string) {
		t.Helper()
		fa, err1 := os.Stat(a)
		fb, err2 := os.Stat(b)
		if err1 != nil || err2 != nil || !os.SameFile(fa, fb) {
			t.Errorf("%s is not a hard link to %s (%v, %v)", a, b, err1, err2)
		}
	}
	same(filepath.Join(root, "vmlinux"), h.spec.Kernel)
	same(filepath.Join(root, "initrd"), h.spec.Initrd)
	same(filepath.Join(root, "rootfs"), h.spec.RootDisk)
	fi, err := os.Stat(h.spec.RootDisk)
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := h.drv.RunAs(h.spec)
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid || uid == 0 {
		t.Errorf("root disk owned by %d:%d, want the VM's jail user %d:%d", st.Uid, st.Gid, uid, gid)
	}
}

func checkJailGone(t *testing.T, h *harness) {
	t.Helper()
	if _, err := os.Lstat(h.jailDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail %s survived Cleanup: %v", h.jailDir(), err)
	}
	for _, p := range []string{h.spec.ControlSocket, h.spec.VsockPath} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived Cleanup: %v", p, err)
		}
	}
	if b, err := os.ReadFile(h.spec.RootDisk); err != nil || string(b) != "rootfs contents" {
		t.Errorf("the VM's real disk must survive the jail's removal: %q, %v", b, err)
	}
	if fi, err := os.Stat(h.spec.RootDisk); err == nil {
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() {
			t.Errorf("the VM's real disk is still lent to %d:%d, want it given back to %d:%d", st.Uid, st.Gid, os.Geteuid(), os.Getegid())
		}
	}
	if _, err := os.Stat(h.spec.Kernel); err != nil {
		t.Errorf("the image kernel must survive the jail's removal: %v", err)
	}
}

// A guest that ignores Ctrl-Alt-Del: Shutdown only asks, the daemon then
// kills, and Cleanup still removes everything.
func TestShutdownIgnoredThenKill(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{ignoreCAD: true})
	c := ctx(t)
	proc, err := h.drv.Launch(c, h.spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.drv.Boot(c, h.spec); err != nil {
		t.Fatal(err)
	}
	if err := h.drv.Shutdown(c, h.spec); err != nil {
		t.Fatal(err)
	}
	if system.WaitExit(c, proc.PID, proc.StartTime, 300*time.Millisecond) {
		t.Fatal("the guest ignores Ctrl-Alt-Del; the process must still run")
	}
	if err := system.Signal(proc.PID, proc.StartTime, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !system.WaitExit(c, proc.PID, proc.StartTime, 5*time.Second) {
		t.Fatal("SIGKILL did not end the process")
	}
	if err := h.drv.Cleanup(c, h.spec); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{h.spec.ControlSocket, h.spec.VsockPath} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived Cleanup: %v", p, err)
		}
	}
	h.assertSpecClean()
}

// A fault at any configuration step fails Launch with Firecracker's
// fault_message, and leaves neither a process nor a file behind.
func TestLaunchFaultAtEachStep(t *testing.T) {
	t.Parallel()
	steps := []string{
		"GET /version", "PUT /logger", "PUT /machine-config", "PUT /boot-source",
		"PUT /drives/rootfs", "PUT /network-interfaces/eth0", "PUT /vsock", "PUT /entropy",
	}
	for _, key := range steps {
		for _, mode := range []JailerMode{JailerOff, JailerOn} {
			if mode == JailerOn && key != "PUT /boot-source" {
				continue // one jailed case proves the jail is undone too
			}
			t.Run(strings.ReplaceAll(key, "/", "_")+"/jailer-"+string(mode), func(t *testing.T) {
				t.Parallel()
				h := newHarness(t, opts{jailer: mode, faults: []string{key}})
				proc, err := h.drv.Launch(ctx(t), h.spec)
				if err == nil {
					t.Fatal("Launch succeeded despite the fault")
				}
				if proc != (vmm.Process{}) {
					t.Errorf("Launch returned a process with its error: %+v", proc)
				}
				want := "firecracker: " + key + ": 400: " + fctest.InjectedFault(key)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
				var apiErr *APIError
				if !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.FaultMessage != fctest.InjectedFault(key) {
					t.Errorf("error %v is not an *APIError with the fault", err)
				}
				if c := errdefs.ClassOf(err); c != errdefs.ClassFailedPrecondition {
					t.Errorf("error class %s, want failed_precondition", c)
				}
				ex := h.execs()
				if len(ex) == 0 {
					t.Fatal("the fake never started")
				}
				for _, e := range ex {
					if system.Alive(e.PID, 0) {
						t.Errorf("Launch failed but left pid %d running", e.PID)
					}
				}
				reqs := h.requests()
				if last := reqs[len(reqs)-1]; fctest.Key(last.Method, last.Path, last.Body) != key {
					t.Errorf("Launch went on after the fault: last request %s %s", last.Method, last.Path)
				}
				checkJailGone(t, h)
				h.assertSpecClean()
			})
		}
	}
}

func TestBootFault(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{faults: []string{"InstanceStart"}})
	c := ctx(t)
	proc, err := h.drv.Launch(c, h.spec)
	if err != nil {
		t.Fatal(err)
	}
	err = h.drv.Boot(c, h.spec)
	if err == nil || !strings.Contains(err.Error(), "firecracker: PUT /actions: 400: "+fctest.InjectedFault("InstanceStart")) {
		t.Errorf("Boot error %v does not carry the fault", err)
	}
	if errdefs.ClassOf(err) != errdefs.ClassFailedPrecondition {
		t.Errorf("Boot error class %s", errdefs.ClassOf(err))
	}
	// The daemon's part: kill and clean up.
	if err := vmm.Kill(c, proc); err != nil {
		t.Fatal(err)
	}
	if err := h.drv.Cleanup(c, h.spec); err != nil {
		t.Fatal(err)
	}
	h.assertSpecClean()
}

// Shutdown and Boot against a VMM that is gone fail with the socket named.
func TestNoVMM(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{})
	for name, f := range map[string]func() error{
		"boot":     func() error { return h.drv.Boot(ctx(t), h.spec) },
		"shutdown": func() error { return h.drv.Shutdown(ctx(t), h.spec) },
	} {
		if err := f(); err == nil || !strings.Contains(err.Error(), h.spec.ControlSocket) {
			t.Errorf("%s without a VMM: %v", name, err)
		}
	}
}

func TestProbe(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{})
	c := ctx(t)

	info := h.drv.Probe(c)
	if !info.Available || info.Version != fctest.FakeVersion || info.Accel != "kvm" || !info.Features.Vsock ||
		info.Binary != filepath.Join(h.dir, "bin", "firecracker") || !strings.Contains(info.Reason, "not jailed") {
		t.Errorf("probe with a working fake: %+v", info)
	}
	if info := h.driver(Config{Jailer: JailerOn}).Probe(c); !info.Available || !strings.Contains(info.Reason, "jailed by "+filepath.Join(h.dir, "bin", "jailer")+" as a per-VM uid from "+strconv.Itoa(DefaultUIDBase)) {
		t.Errorf("probe jailed: %+v", info)
	}
	if info := h.driver(Config{Jailer: JailerAuto, JailerBinary: "no-such-jailer"}).Probe(c); !info.Available || !strings.Contains(info.Reason, "not found") {
		t.Errorf("auto without a jailer runs unjailed: %+v", info)
	}
	if info := h.driver(Config{Jailer: JailerOn, JailerBinary: "no-such-jailer"}).Probe(c); info.Available || !strings.Contains(info.Reason, "jailer binary") {
		t.Errorf("jailer on but missing: %+v", info)
	}
	if info := h.driver(Config{Jailer: JailerOn, ChrootBase: "relative"}).Probe(c); info.Available || !strings.Contains(info.Reason, "chroot base") {
		t.Errorf("jailer without a usable chroot base: %+v", info)
	}

	// A jailer from another release.
	old := filepath.Join(h.dir, "bin", "jailer-old")
	writeFile(t, old, []byte("#!/bin/sh\necho 'Jailer v1.15.0'\n"), 0o755)
	if info := h.driver(Config{Jailer: JailerOn, JailerBinary: old}).Probe(c); info.Available || !strings.Contains(info.Reason, "same release") {
		t.Errorf("mismatched jailer: %+v", info)
	}

	// This host's real KVM check, on a device that does not exist.
	d := h.driver(Config{KVMDevice: filepath.Join(h.dir, "no-kvm")})
	d.kvmUsable = system.KVMUsable
	info = d.Probe(c)
	if info.Available || !strings.Contains(info.Reason, "needs KVM") || info.Version != fctest.FakeVersion || !info.Features.Vsock {
		t.Errorf("probe without KVM: %+v", info)
	}
	if _, err := d.Launch(c, h.spec); errdefs.ClassOf(err) != errdefs.ClassFailedPrecondition || !strings.Contains(err.Error(), "KVM") {
		t.Errorf("Launch without KVM: %v", err)
	}
	if len(h.execs()) != 0 {
		t.Error("nothing may start without KVM")
	}
}

// A binary that is not Firecracker is refused by Probe and by Launch,
// which then starts nothing.
func TestNotFirecracker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{})
	c := ctx(t)
	for name, tc := range map[string]struct{ script, want string }{
		"qemu":   {"#!/bin/sh\necho 'QEMU emulator version 8.2.2'\n", `is not Firecracker: --version printed "QEMU emulator version 8.2.2"`},
		"v2":     {"#!/bin/sh\necho 'Firecracker v2.0.0'\n", "banger speaks the v1 API"},
		"v1.7":   {"#!/bin/sh\necho 'Firecracker v1.7.0'\n", "Firecracker v1.7.0, older than v1.8"},
		"v1.4":   {"#!/bin/sh\necho 'Firecracker v1.4.1'\n", "Firecracker v1.4.1, older than v1.8"},
		"fails":  {"#!/bin/sh\necho oops >&2\nexit 3\n", "--version failed"},
		"silent": {"#!/bin/sh\n", "is not Firecracker"},
	} {
		bin := filepath.Join(h.dir, "bin", "firecracker-"+name)
		writeFile(t, bin, []byte(tc.script), 0o755)
		d := h.driver(Config{Binary: bin})
		info := d.Probe(c)
		if info.Available || info.Binary != bin || !strings.Contains(info.Reason, tc.want) || !strings.Contains(info.Reason, "hint:") {
			t.Errorf("%s: probe %+v, want the reason %q with a hint", name, info, tc.want)
		}
		_, err := d.Launch(c, h.spec)
		if errdefs.ClassOf(err) != errdefs.ClassFailedPrecondition || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Launch error %v", name, err)
		}
	}
	d := h.driver(Config{Binary: "no-such-firecracker"})
	if info := d.Probe(c); info.Available || !strings.Contains(info.Reason, "not found") || !strings.Contains(info.Reason, "hint:") {
		t.Errorf("missing binary: %+v", info)
	}
	if _, err := os.Lstat(h.spec.ControlSocket); !errors.Is(err, os.ErrNotExist) {
		t.Error("a refused Launch left a socket")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{})
	long := func(n int) string { return h.dir + "/" + strings.Repeat("s", n-len(h.dir)-1) }
	bz := make([]byte, 0x300)
	copy(bz, "MZ")
	copy(bz[0x202:], "HdrS")
	otherMachine := uint16(183)
	if hostMachine() == 183 {
		otherMachine = 62
	}
	file := func(name string, data []byte) string {
		p := filepath.Join(h.dir, "img", name)
		writeFile(t, p, data, 0o644)
		return p
	}
	cases := []struct {
		name  string
		cfg   Config
		spec  func(*vmm.Spec)
		class errdefs.Class
		want  string
	}{
		{"vcpus 33", Config{}, func(s *vmm.Spec) { s.VCPUs = 33 }, errdefs.ClassInvalidArgument, "vcpus 33: Firecracker runs 1 to 32 vCPUs"},
		{"vcpus 0", Config{}, func(s *vmm.Spec) { s.VCPUs = 0 }, errdefs.ClassInvalidArgument, "vcpus 0"},
		{"memory", Config{}, func(s *vmm.Spec) { s.MemoryMiB = 32 }, errdefs.ClassInvalidArgument, "memory 32 MiB is too small"},
		{"no kernel", Config{}, func(s *vmm.Spec) { s.Kernel = "" }, errdefs.ClassInvalidArgument, "incomplete"},
		{"api socket 108 bytes", Config{}, func(s *vmm.Spec) { s.ControlSocket = long(108) }, errdefs.ClassInvalidArgument, "api socket path"},
		{"vsock without room for _port", Config{}, func(s *vmm.Spec) { s.VsockPath = long(100) }, errdefs.ClassInvalidArgument, "vsock socket path"},
		{"cid 2", Config{}, func(s *vmm.Spec) { s.VsockCID = 2 }, errdefs.ClassInvalidArgument, "cid 2"},
		{"bad mac", Config{}, func(s *vmm.Spec) { s.MAC = "02:fc" }, errdefs.ClassInvalidArgument, "guest mac"},
		{"bad id", Config{}, func(s *vmm.Spec) { s.ID = "../etc" }, errdefs.ClassInvalidArgument, "instance id"},
		{"qcow2 disk", Config{}, func(s *vmm.Spec) { s.RootDiskFormat = "qcow2" }, errdefs.ClassInvalidArgument, "raw files and block devices only"},
		{"guest ram file", Config{}, func(s *vmm.Spec) { s.MemoryFile = filepath.Join(h.dir, "memory.ram") }, errdefs.ClassNotSupported, "a qemu feature"},
		{"kernel missing", Config{}, func(s *vmm.Spec) { s.Kernel = filepath.Join(h.dir, "nope") }, errdefs.ClassFailedPrecondition, "is missing"},
		{"kernel not elf", Config{}, func(s *vmm.Spec) { s.Kernel = file("text", []byte("not a kernel at all")) }, errdefs.ClassInvalidArgument, "is not an ELF file"},
		{"kernel bzImage", Config{}, func(s *vmm.Spec) { s.Kernel = file("bzImage", bz) }, errdefs.ClassInvalidArgument, "compressed bzImage"},
		{"kernel other arch", Config{}, func(s *vmm.Spec) { s.Kernel = file("arm", elfKernel(otherMachine)) }, errdefs.ClassInvalidArgument, "for machine"},
		{"jailer mode", Config{Jailer: "sometimes"}, nil, errdefs.ClassInvalidArgument, "jailer mode"},
		{"relative chroot", Config{Jailer: JailerOn, ChrootBase: "jail"}, nil, errdefs.ClassInvalidArgument, "chroot base"},
		{"exec name", Config{Jailer: JailerOn, Binary: file("fc-bin", []byte("#!/bin/sh\n"))}, nil, errdefs.ClassInvalidArgument, `contains "firecracker"`},
		{"jailed socket too long", Config{Jailer: JailerOn, ChrootBase: long(60)}, nil, errdefs.ClassInvalidArgument, "jailed api socket path"},
	}
	for _, tc := range cases {
		spec := h.spec
		if tc.spec != nil {
			tc.spec(&spec)
		}
		d := h.driver(tc.cfg)
		err := d.Validate(spec)
		if errdefs.ClassOf(err) != tc.class || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want %s error with %q", tc.name, err, tc.class, tc.want)
		}
		// Launch refuses the same spec before anything starts.
		if _, lerr := d.Launch(ctx(t), spec); lerr == nil || lerr.Error() != err.Error() {
			t.Errorf("%s: Launch = %v, want the Validate error", tc.name, lerr)
		}
	}
	if ex := h.execs(); len(ex) != 0 {
		t.Errorf("invalid specs started processes: %+v", ex)
	}
	if _, err := os.Lstat(filepath.Join(h.dir, "jail")); !errors.Is(err, os.ErrNotExist) {
		t.Error("an invalid spec created a jail")
	}
	if err := h.drv.Validate(h.spec); err != nil {
		t.Errorf("the harness spec must be valid: %v", err)
	}
	noNet := h.spec
	noNet.Tap, noNet.MAC, noNet.VsockPath, noNet.VsockCID, noNet.Initrd = "", "", "", 0, ""
	if err := h.drv.Validate(noNet); err != nil {
		t.Errorf("network, vsock and initrd are optional: %v", err)
	}
}

// Without network, vsock and initrd the configuration skips them.
func TestConfigStepsMinimal(t *testing.T) {
	spec := vmm.Spec{ID: testID, VCPUs: 1, MemoryMiB: 128, Kernel: "/k", RootDisk: "/d"}
	var got []string
	for _, s := range configSteps(spec, pathsFor(spec, nil)) {
		got = append(got, s.method+" "+s.path)
	}
	want := "PUT /logger,PUT /machine-config,PUT /boot-source,PUT /drives/rootfs,PUT /entropy"
	if strings.Join(got, ",") != want {
		t.Errorf("steps %v, want %s", got, want)
	}
}

// v1.8.0, the oldest Firecracker banger runs, is accepted.
func TestOldestFirecracker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, opts{})
	bin := filepath.Join(h.dir, "bin", "firecracker-v1.8.0")
	writeFile(t, bin, []byte("#!/bin/sh\necho 'Firecracker v1.8.0'\n"), 0o755)
	if info := h.driver(Config{Binary: bin, Jailer: JailerOff}).Probe(ctx(t)); !info.Available || info.Version != "1.8.0" {
		t.Errorf("probe of v1.8.0: %+v", info)
	}
}
