package doctor

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker"
	"github.com/banger-vm/banger/internal/vmm/qemu"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

func find(r Report, name string) Check {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{}
}

// TestThisHost runs the doctor with banger's real drivers against the real
// host, and checks its report against what the host has: on the build
// machines (no usable KVM, no Firecracker, QEMU installed) it must say
// exactly that and pick QEMU under TCG; on a KVM host the same assertions
// follow what the host really has.
func TestThisHost(t *testing.T) {
	testutil.RequireTools(t, "qemu-system-x86_64")
	ctx := context.Background()
	dir := t.TempDir()
	q := qemu.New()
	r := Run(ctx, Options{
		Layout: layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")},
		Drivers: vmm.Registry{
			vmm.KindFirecracker: firecracker.New(firecracker.Config{ChrootBase: filepath.Join(dir, "jail")}),
			vmm.KindQEMU:        q,
		},
		Bridge: "bgr-doctor-none",
	})
	kvmOK, why := system.KVMUsable("/dev/kvm")
	_, noFirecracker := exec.LookPath("firecracker")
	t.Logf("this host: kvm usable %v (%s); firecracker on PATH: %v", kvmOK, why, noFirecracker == nil)

	kvm := find(r, "kvm")
	wantKVM := OK
	if !kvmOK {
		wantKVM = Warn
	}
	if kvm.Status != wantKVM || kvm.Detail != why {
		t.Errorf("kvm check %+v, want %s with %q", kvm, wantKVM, why)
	}

	qc, qi := find(r, "vmm qemu"), q.Probe(ctx)
	if !qi.Available || !strings.Contains(qc.Detail, "qemu-system-x86_64") {
		t.Fatalf("qemu should run VMs here: %+v %+v", qi, qc)
	}
	switch {
	case kvmOK && (qi.Accel != "kvm" || qc.Status != OK):
		t.Errorf("with KVM, QEMU must use it: accel %q, check %+v", qi.Accel, qc)
	case !kvmOK && (qi.Accel != "tcg" || qc.Status != Warn || !strings.Contains(qc.Detail, "TCG")):
		t.Errorf("without KVM, QEMU must run under TCG and the check warn: accel %q, check %+v", qi.Accel, qc)
	}

	fc := find(r, "vmm firecracker")
	switch {
	case noFirecracker != nil:
		if fc.Status != Warn || !strings.Contains(fc.Detail, "not found") || !strings.Contains(fc.Detail+fc.Hint, "install") {
			t.Errorf("firecracker is not on PATH, the check must say so, with how to install it: %+v", fc)
		}
	case !kvmOK:
		if fc.Status != Warn || !strings.Contains(fc.Detail, "needs KVM") {
			t.Errorf("firecracker cannot run without KVM, the check must say so: %+v", fc)
		}
	}
	if fc.Status == OK {
		if r.AutoVMM != vmm.KindFirecracker {
			t.Errorf("firecracker can run, yet auto picks %q (%s)", r.AutoVMM, r.AutoReason)
		}
	} else if r.AutoVMM != vmm.KindQEMU || !strings.Contains(r.AutoReason, "firecracker unavailable") {
		t.Errorf("firecracker cannot run: auto must pick qemu and say why, got %q (%s)", r.AutoVMM, r.AutoReason)
	}
	if r.AutoVMM == vmm.KindQEMU && !kvmOK && !strings.Contains(r.AutoReason, "TCG") {
		t.Errorf("without KVM the doctor must say QEMU runs under TCG: %s", r.AutoReason)
	}
	if auto := find(r, "auto vmm"); !r.CanRunVMs || auto.Status != OK {
		t.Errorf("a VMM runs here, yet: can run %v, %+v", r.CanRunVMs, auto)
	}
	if c := find(r, "control socket"); c.Status != Warn || !strings.Contains(c.Detail, "not running") {
		t.Errorf("no daemon: %+v", c)
	}
	if c := find(r, "bridge bgr-doctor-none"); c.Status != Warn {
		t.Errorf("absent bridge: %+v", c)
	}
}

func TestNoVMMMeansCannotRun(t *testing.T) {
	d := qemu.New()
	d.Binary = "banger-no-such-qemu"
	r := Run(context.Background(), Options{Layout: layout.Layout{StateDir: t.TempDir(), RuntimeDir: t.TempDir()}, Drivers: vmm.Registry{vmm.KindQEMU: d}})
	if r.CanRunVMs {
		t.Fatal("no VMM binary, yet the doctor says VMs can run")
	}
	if c := find(r, "auto vmm"); c.Status != Fail || c.Hint == "" {
		t.Fatalf("auto vmm: %+v", c)
	}
	if c := find(r, "vmm qemu"); !strings.Contains(c.Detail, "not found") || !strings.Contains(c.Detail+c.Hint, "apt-get install qemu-system-x86") {
		t.Fatalf("qemu: %+v", c)
	}
}

func TestWorldUsableSocketFails(t *testing.T) {
	dir := t.TempDir()
	l := layout.Layout{StateDir: dir, RuntimeDir: dir}
	if err := os.WriteFile(l.ControlSocket(), nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(l.ControlSocket(), 0o666)
	if c := socketCheck(l.ControlSocket()); c.Status != Fail {
		t.Fatalf("a 0666 socket must fail: %+v", c)
	}
	os.Chmod(l.ControlSocket(), 0o600)
	if c := socketCheck(l.ControlSocket()); c.Status != OK {
		t.Fatalf("a 0600 socket is fine: %+v", c)
	}
}

// fakeBin writes an executable script named name into dir that prints out.
func fakeBin(t *testing.T, dir, name, out string) {
	t.Helper()
	script := "#!/bin/sh\necho '" + out + "'\n"
	if err := testutil.WriteExecutable(filepath.Join(dir, name), []byte(script)); err != nil {
		t.Fatal(err)
	}
}

// TestFirecrackerBranch puts fake firecracker and jailer binaries on PATH:
// the doctor must find them and read their versions, and still refuse to
// pick Firecracker where KVM is not usable (or pick it where it is).
func TestFirecrackerBranch(t *testing.T) {
	bin := t.TempDir()
	fakeBin(t, bin, "firecracker", "Firecracker v1.16.1")
	fakeBin(t, bin, "jailer", "Jailer v1.16.1")
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	dir := t.TempDir()
	drivers := func() vmm.Registry {
		return vmm.Registry{
			vmm.KindFirecracker: firecracker.New(firecracker.Config{ChrootBase: filepath.Join(dir, "jail")}),
			vmm.KindQEMU:        qemu.New(),
		}
	}
	r := Run(context.Background(), Options{Layout: layout.Layout{StateDir: dir, RuntimeDir: dir}, Drivers: drivers()})
	fc := find(r, "vmm firecracker")
	if !strings.Contains(fc.Detail, filepath.Join(bin, "firecracker")) || !strings.Contains(fc.Detail, "1.16.1") {
		t.Fatalf("fake firecracker not found or its version not read: %+v", fc)
	}
	if kvmOK, _ := system.KVMUsable("/dev/kvm"); !kvmOK {
		if fc.Status == OK || r.AutoVMM == vmm.KindFirecracker || !strings.Contains(r.AutoReason, "firecracker unavailable") {
			t.Fatalf("firecracker chosen without usable KVM: %+v, auto %s (%s)", fc, r.AutoVMM, r.AutoReason)
		}
	}

	// A binary called firecracker that is something else is reported as such.
	fakeBin(t, bin, "firecracker", "QEMU emulator version 7.2.0")
	r = Run(context.Background(), Options{Layout: layout.Layout{StateDir: dir, RuntimeDir: dir}, Drivers: drivers()})
	if fc := find(r, "vmm firecracker"); fc.Status == OK || !strings.Contains(fc.Detail, "not Firecracker") {
		t.Fatalf("a non-Firecracker binary was accepted: %+v", fc)
	}
}

// The jailer needs cgroup v2: a unified hierarchy is ok, anything else is
// a warning that names the jailer and says how to fix it.
func TestCgroupCheck(t *testing.T) {
	v2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(v2, "cgroup.controllers"), []byte("cpu memory pids\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := cgroupCheck(v2); c.Status != OK {
		t.Errorf("cgroup v2 root: %+v", c)
	}
	v1 := t.TempDir() // a v1 root holds one directory per controller
	if err := os.Mkdir(filepath.Join(v1, "cpu"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := cgroupCheck(v1)
	if c.Status != Warn || !strings.Contains(c.Detail, "jailer") || !strings.Contains(c.Hint, "systemd.unified_cgroup_hierarchy=1") {
		t.Errorf("cgroup v1 root: %+v, want a warning naming the jailer with the boot-option hint", c)
	}
	// Run uses the configured root.
	r := Run(context.Background(), Options{Layout: layout.Layout{StateDir: t.TempDir()}, Drivers: vmm.Registry{}, CgroupRoot: v1})
	if got := find(r, "cgroup v2"); got.Status != Warn {
		t.Errorf("Run with a cgroup v1 root: %+v", got)
	}
}

// A Firecracker older than v1.8 is reported as unusable, with the reason.
func TestOldFirecracker(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "firecracker")
	if err := testutil.WriteExecutable(bin, []byte("#!/bin/sh\necho 'Firecracker v1.7.0'\n")); err != nil {
		t.Fatal(err)
	}
	r := Run(context.Background(), Options{
		Layout:  layout.Layout{StateDir: dir},
		Drivers: vmm.Registry{vmm.KindFirecracker: firecracker.New(firecracker.Config{Binary: bin, Jailer: firecracker.JailerOff})},
	})
	c := find(r, "vmm firecracker")
	if c.Status != Warn || !strings.Contains(c.Detail, "v1.7.0, older than v1.8") || !strings.Contains(c.Detail, "hint:") {
		t.Errorf("old firecracker: %+v", c)
	}
}

// TestDiskStrategies: doctor lists every strategy for the auto VMM, says
// why one is not offered, and which auto picks.
func TestDiskStrategies(t *testing.T) {
	raw := vmmtest.New() // a driver that opens raw disks only, as Firecracker
	raw.Info.Kind = vmm.KindQEMU
	r := Run(context.Background(), Options{Layout: layout.Layout{StateDir: t.TempDir(), RuntimeDir: t.TempDir()}, Drivers: vmm.Registry{vmm.KindQEMU: raw}})
	got := map[string]Check{}
	for _, c := range r.Checks {
		got[c.Name] = c
	}
	if c := got["disk sparse-copy"]; c.Status != OK {
		t.Fatalf("sparse-copy: %+v", c)
	}
	if c := got["disk qcow2"]; c.Status != Warn || !strings.Contains(c.Detail, "cannot open a qcow2 disk") {
		t.Fatalf("qcow2 for a raw-only driver: %+v", c)
	}
	if len(r.Disks) != 4 || r.AutoDisk == "" || r.AutoDisk == "qcow2" {
		t.Fatalf("disks %+v, auto %q", r.Disks, r.AutoDisk)
	}
}
