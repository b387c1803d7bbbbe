// Package doctor checks, one by one, what banger needs from its host, and
// says for each what to do about it.
package doctor

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Status of one check.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn" // banger works, with less (slower, or a feature missing)
	Fail Status = "fail" // something banger needs is missing
)

// Check is one finding.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

// Report is the whole diagnosis.
type Report struct {
	Checks []Check `json:"checks"`
	// AutoVMM is the driver `auto` picks, and why; empty if none can run.
	AutoVMM    string `json:"auto_vmm"`
	AutoReason string `json:"auto_reason"`
	// CanRunVMs is false when no driver can run a VM here.
	CanRunVMs bool `json:"can_run_vms"`

	// Root disk strategies (issue 11) offered to the auto VMM's VMs, and
	// the one auto picks (for an image banger cannot personalise other
	// than on a raw disk, auto keeps to reflink or sparse-copy).
	Disks          []storage.Offer `json:"disks,omitempty"`
	AutoDisk       string          `json:"auto_disk,omitempty"`
	AutoDiskReason string          `json:"auto_disk_reason,omitempty"`
}

// Options say where to look.
type Options struct {
	Layout    layout.Layout
	Drivers   vmm.Registry
	Bridge    string
	KVMDevice string
	// KVMUsable defaults to system.KVMUsable.
	KVMUsable func(dev string) (bool, string)
	// CgroupRoot is where the cgroup hierarchy is mounted; default
	// /sys/fs/cgroup.
	CgroupRoot string
}

// Run performs every check.
func Run(ctx context.Context, o Options) Report {
	if o.KVMDevice == "" {
		o.KVMDevice = "/dev/kvm"
	}
	if o.CgroupRoot == "" {
		o.CgroupRoot = "/sys/fs/cgroup"
	}
	if o.KVMUsable == nil {
		o.KVMUsable = system.KVMUsable
	}
	var r Report
	add := func(c Check) { r.Checks = append(r.Checks, c) }

	if ok, why := o.KVMUsable(o.KVMDevice); ok {
		add(Check{Name: "kvm", Status: OK, Detail: why})
	} else {
		add(Check{Name: "kvm", Status: Warn, Detail: why,
			Hint: "enable hardware virtualisation (or nested virtualisation) and load kvm_intel or kvm_amd; without it Firecracker cannot run and QEMU falls back to slow TCG"})
	}
	for _, kind := range vmm.AutoOrder {
		d, ok := o.Drivers[kind]
		if !ok {
			continue
		}
		info := d.Probe(ctx)
		c := Check{Name: "vmm " + kind, Detail: info.Reason}
		switch {
		case info.Available && info.Accel == "tcg":
			c.Status, c.Hint = Warn, "runs, slowly: make KVM usable for full speed"
		case info.Available:
			c.Status = OK
		default:
			c.Status = Warn
			if !strings.Contains(info.Reason, "hint:") {
				c.Hint = installHint(kind)
			}
		}
		if info.Binary != "" {
			c.Detail = fmt.Sprintf("%s %s: %s", info.Binary, info.Version, info.Reason)
		}
		add(c)
	}
	for _, t := range []struct{ cmd, pkg, why string }{
		{"mmdebstrap", "mmdebstrap", "builds the default image"},
		{"mkfs.ext4", "e2fsprogs", "makes root filesystems"},
		{"debugfs", "e2fsprogs", "writes each VM's identity onto its disk"},
		{"resize2fs", "e2fsprogs", "grows VM disks"},
		{"nft", "nftables", "inspects banger's nftables table (banger itself uses netlink)"},
	} {
		if p, err := exec.LookPath(t.cmd); err != nil {
			add(Check{Name: t.cmd, Status: Warn, Detail: "not found: " + t.why, Hint: "apt-get install " + t.pkg})
		} else {
			add(Check{Name: t.cmd, Status: OK, Detail: p})
		}
	}
	add(busyboxCheck())
	add(ipForwardCheck())
	add(cgroupCheck(o.CgroupRoot))
	add(bridgeCheck(o.Bridge))
	add(socketCheck(o.Layout.ControlSocket()))
	add(spaceCheck(o.Layout.StateDir))

	info, reason, err := vmm.Choose(ctx, o.Drivers, vmm.Auto)
	if err != nil {
		add(Check{Name: "auto vmm", Status: Fail, Detail: err.Error(), Hint: "install qemu-system-x86 (runs anywhere) or firecracker (needs KVM)"})
	} else {
		r.AutoVMM, r.AutoReason, r.CanRunVMs = info.Kind, reason, true
		add(Check{Name: "auto vmm", Status: OK, Detail: info.Kind + ": " + reason})
		checks, offers, kind, why := diskChecks(ctx, o.Layout.VMsDir(), info)
		r.Checks = append(r.Checks, checks...)
		r.Disks, r.AutoDisk, r.AutoDiskReason = offers, string(kind), why
	}
	return r
}

func installHint(kind string) string {
	switch kind {
	case vmm.KindFirecracker:
		return "install firecracker and jailer (release binaries from github.com/firecracker-microvm/firecracker) on a host with KVM"
	case vmm.KindQEMU:
		return "apt-get install qemu-system-x86"
	}
	return ""
}

func busyboxCheck() Check {
	c := Check{Name: "busybox (static)", Hint: "apt-get install busybox-static"}
	p, err := exec.LookPath("busybox")
	if err != nil {
		c.Status, c.Detail = Warn, "not found: image builds need it for the initramfs"
		return c
	}
	real, _ := filepath.EvalSymlinks(p)
	f, err := elf.Open(real)
	if err != nil {
		c.Status, c.Detail = Warn, fmt.Sprintf("%s: %v", p, err)
		return c
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			c.Status, c.Detail = Warn, p+" is dynamically linked: guests' initramfs has no libc"
			return c
		}
	}
	c.Status, c.Detail, c.Hint = OK, p, ""
	return c
}

func ipForwardCheck() Check {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	switch {
	case err != nil:
		return Check{Name: "ip forwarding", Status: Warn, Detail: err.Error()}
	case strings.TrimSpace(string(b)) == "1":
		return Check{Name: "ip forwarding", Status: OK, Detail: "net.ipv4.ip_forward = 1"}
	}
	return Check{Name: "ip forwarding", Status: Warn, Detail: "net.ipv4.ip_forward = 0", Hint: "the daemon enables it when it sets up the guest network"}
}

// cgroupCheck: the Firecracker driver runs the jailer with
// --cgroup-version 2, which needs the unified (v2) hierarchy mounted at
// root; on a cgroup-v1-only or hybrid host a jailed VM fails at launch.
func cgroupCheck(root string) Check {
	c := Check{Name: "cgroup v2"}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		c.Status, c.Detail = OK, root+" is a cgroup v2 hierarchy (the jailer's --cgroup-version 2)"
		return c
	}
	c.Status = Warn
	c.Detail = root + " is not a cgroup v2 hierarchy (no cgroup.controllers): the Firecracker jailer, which banger runs with --cgroup-version 2, fails at launch"
	c.Hint = "boot the host with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only), or run Firecracker without the jailer (jailer off); QEMU is not affected"
	return c
}

func bridgeCheck(name string) Check {
	if name == "" {
		name = "banger0"
	}
	c := Check{Name: "bridge " + name}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		c.Status, c.Detail, c.Hint = Warn, "absent", "the daemon creates it when it starts"
		return c
	}
	addrs, _ := ifc.Addrs()
	c.Status, c.Detail = OK, fmt.Sprintf("up=%v addrs=%v", ifc.Flags&net.FlagUp != 0, addrs)
	return c
}

func socketCheck(path string) Check {
	c := Check{Name: "control socket"}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		c.Status, c.Detail, c.Hint = Warn, path+" absent: the daemon is not running", "start it as root: banger daemon"
		return c
	}
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		return c
	}
	if fi.Mode().Perm()&0o007 != 0 {
		c.Status, c.Detail, c.Hint = Fail, fmt.Sprintf("%s is %v: usable by every user", path, fi.Mode().Perm()), "restart the daemon; it creates the socket 0600 (0660 with --socket-group)"
		return c
	}
	c.Status, c.Detail = OK, fmt.Sprintf("%s %v", path, fi.Mode().Perm())
	return c
}

func spaceCheck(dir string) Check {
	c := Check{Name: "free space"}
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil || probe == "/" {
			break
		}
		probe = filepath.Dir(probe)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(probe, &st); err != nil {
		c.Status, c.Detail = Warn, err.Error()
		return c
	}
	free := int64(st.Bavail) * st.Bsize
	c.Detail = fmt.Sprintf("%.1f GiB free for %s", float64(free)/(1<<30), dir)
	switch {
	case free < 2<<30:
		c.Status, c.Hint = Fail, "free space: an image needs about 2 GiB and each VM its disk's data"
	case free < 10<<30:
		c.Status, c.Hint = Warn, "less than 10 GiB free: enough for a few VMs"
	default:
		c.Status = OK
	}
	return c
}
