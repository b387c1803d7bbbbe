package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

func find(r Report, name string) Check {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{}
}

// TestThisHost runs the doctor against the real host. On the build machines
// (no usable KVM, no Firecracker, QEMU installed) it must say exactly that;
// on a KVM host the same assertions follow what the host really has.
func TestThisHost(t *testing.T) {
	testutil.RequireTools(t, "qemu-system-x86_64")
	dir := t.TempDir()
	r := Run(context.Background(), Options{
		Layout:  layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")},
		Drivers: vmm.Registry{vmm.KindQEMU: qemu.New()},
		Bridge:  "bgr-doctor-none",
	})
	kvmOK, why := system.KVMUsable("/dev/kvm")
	if kvm := find(r, "kvm"); (kvm.Status == OK) != kvmOK || kvm.Detail != why {
		t.Fatalf("kvm check %+v disagrees with the host (usable=%v: %s)", kvm, kvmOK, why)
	}
	q := find(r, "vmm qemu")
	if !r.CanRunVMs || r.AutoVMM != vmm.KindQEMU || !strings.Contains(q.Detail, "qemu-system-x86_64") {
		t.Fatalf("qemu should run VMs here: %+v %+v", r, q)
	}
	if !kvmOK && (q.Status != Warn || !strings.Contains(r.AutoReason, "TCG")) {
		t.Fatalf("without KVM the doctor must say QEMU runs under TCG: %+v / %s", q, r.AutoReason)
	}
	if c := find(r, "control socket"); c.Status != Warn || !strings.Contains(c.Detail, "not running") {
		t.Fatalf("no daemon: %+v", c)
	}
	if c := find(r, "bridge bgr-doctor-none"); c.Status != Warn {
		t.Fatalf("absent bridge: %+v", c)
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
	if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
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
			vmm.KindFirecracker: firecracker.New(firecracker.Config{ChrootBase: filepath.Join(dir, "jail"), UID: 65534, GID: 65534}),
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
