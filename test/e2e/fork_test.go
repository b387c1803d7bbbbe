package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
)

// markerSleep is the argument of a process the template runs before its
// snapshot: forks of the snapshot must still run it.
const markerSleep = "7777"

// testForks on real Debian guests (the default image, with its agent): a
// snapshot of a running VM, three forks of it started at once, each with
// its own IP, MAC, hostname, machine ID and host key, reachable over SSH
// with its pin, reaching the others and the gateway, its clock within a
// second of the host's, and the template's process still running; vm fork
// in one step; a fork whose first start is pending keeps its snapshot;
// and a warm image: vm run restores instead of booting, and says so.
func testForks(t *testing.T, d *daemon) {
	t.Cleanup(func() { // before the daemon's own cleanup (LIFO)
		for _, sn := range d.snapshots() {
			if sn.Kind != "warm" {
				d.run("vm", "snapshot", "delete", sn.Name)
			}
		}
	})
	tmpl := d.startVM("tmpl", "--network", "forks")
	d.must("vm", "exec", "tmpl", "--", "sh", "-c", "setsid sleep "+markerSleep+" </dev/null >/dev/null 2>&1 &")
	var sn api.Snapshot
	mustJSON(t, d.must("vm", "snapshot", "create", "tmpl", "base", "-o", "json"), &sn)
	if sn.Kind != "user" {
		t.Fatalf("snapshot kind %q", sn.Kind)
	}

	// Three forks of one snapshot, created and started at once.
	names := []string{"fork-a", "fork-b", "fork-c"}
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, n := range names {
		wg.Go(func() {
			_, errs[i] = d.run("vm", "create", n, "--from", "base", "--network", "forks", "--start")
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("fork %s: %v", names[i], err)
		}
	}

	seen := map[string]map[string]string{} // what -> value -> vm
	unique := func(what, val, vm string) {
		t.Helper()
		if val == "" {
			t.Fatalf("%s of %s is empty", what, vm)
		}
		if seen[what] == nil {
			seen[what] = map[string]string{}
		}
		if other, ok := seen[what][val]; ok {
			t.Fatalf("%s %q of %s is also %s's", what, val, vm, other)
		}
		seen[what][val] = vm
	}
	for _, vm := range append([]string{"tmpl"}, names...) {
		v := d.show(vm)
		if v.State != "running" {
			t.Fatalf("%s is %s", vm, v.State)
		}
		unique("ip", v.GuestIP, vm)
		unique("mac", v.MAC, vm)
		unique("host key", v.HostKey, vm)
		out := d.must("vm", "exec", vm, "--", "sh", "-c",
			"hostname; cat /etc/machine-id; cat /sys/class/net/$(ip -o route show default | awk '{print $5}')/address; ip -o -4 addr show scope global | awk '{print $4}'; ip route show default; cat /etc/ssh/ssh_host_ed25519_key.pub")
		f := strings.Split(strings.TrimSpace(out), "\n")
		if len(f) != 6 {
			t.Fatalf("%s: guest facts:\n%s", vm, out)
		}
		if f[0] != vm {
			t.Fatalf("%s: hostname %q", vm, f[0])
		}
		unique("machine id", f[1], vm)
		if f[2] != v.MAC {
			t.Fatalf("%s: the guest's interface has mac %s, banger gave it %s", vm, f[2], v.MAC)
		}
		if !strings.HasPrefix(f[3], v.GuestIP+"/") {
			t.Fatalf("%s: the guest has address %s, banger gave it %s", vm, f[3], v.GuestIP)
		}
		if gw := gatewayOf(t, v.GuestIP); !strings.Contains(f[4], "via "+gw) {
			t.Fatalf("%s: default route %q, want via %s", vm, f[4], gw)
		}
		// journald kept writing where the template's machine id said;
		// journalctl, which reads the new id's dir, still finds it.
		if out := d.must("vm", "exec", vm, "--", "sudo", "journalctl", "-q", "-n", "1", "--no-pager"); strings.TrimSpace(out) == "" || strings.Contains(out, "No entries") {
			t.Fatalf("%s: journalctl finds no journal: %q", vm, out)
		}
		if !strings.HasPrefix(f[5], v.HostKey) {
			t.Fatalf("%s: the guest's host key %q is not the pinned %q", vm, f[5], v.HostKey)
		}
		if vm == "tmpl" {
			continue
		}
		if v.Origin == nil || v.Origin.Snapshot != "base" || v.Origin.Pending || v.Origin.Warm {
			t.Fatalf("%s: origin %+v", vm, v.Origin)
		}
		// Restored, not booted: the template's process still runs.
		if out := d.must("vm", "exec", vm, "--", "pgrep", "-f", "sleep "+markerSleep); strings.TrimSpace(out) == "" {
			t.Fatalf("%s: the template's process is gone", vm)
		}
		if _, stages := stageNames(d, vm); stages["restore.from"] != "note" || stages["guest.reidentify"] != "done" {
			t.Fatalf("%s: start stages %v", vm, stages)
		}
		// The clock is the host's, not the snapshot's.
		before := time.Now()
		out = strings.TrimSpace(d.must("vm", "exec", vm, "--", "date", "+%s.%N"))
		after := time.Now()
		g, err := strconv.ParseFloat(out, 64)
		if err != nil {
			t.Fatalf("%s: date printed %q", vm, out)
		}
		guest := time.Unix(0, int64(g*1e9))
		if guest.Before(before.Add(-time.Second)) || guest.After(after.Add(time.Second)) {
			t.Fatalf("%s: the guest's clock says %s; the host's was between %s and %s", vm, guest, before, after)
		}
		// SSH over the network, checked against the pin from the agent.
		if out := d.must("vm", "ssh", "--network", vm, "--", "hostname"); strings.TrimSpace(out) != vm {
			t.Fatalf("%s: ssh --network: %q", vm, out)
		}
	}
	// Forks reach each other (they share a network) and the gateway's
	// link (its address resolves).
	b := d.show("fork-b")
	probe := "for i in $(seq 60); do (exec 3<>/dev/tcp/" + b.GuestIP + "/22) 2>/dev/null && break; sleep 1; done; exec 3<>/dev/tcp/" + b.GuestIP + "/22; head -c 7 <&3"
	if out := d.must("vm", "exec", "fork-a", "--", "bash", "-c", probe); out != "SSH-2.0" {
		t.Fatalf("fork-a -> fork-b:22 read %q", out)
	}
	gw := gatewayOf(t, b.GuestIP)
	d.run("vm", "exec", "fork-c", "--", "timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/"+gw+"/9")
	if out := d.must("vm", "exec", "fork-c", "--", "ip", "neigh", "show", gw); !strings.Contains(out, "lladdr") {
		t.Fatalf("fork-c did not resolve the gateway %s: %q", gw, out)
	}
	// The template is left as it was.
	if out := d.must("vm", "exec", "tmpl", "--", "hostname"); strings.TrimSpace(out) != "tmpl" || d.show("tmpl").GuestIP != tmpl.GuestIP {
		t.Fatalf("the template changed: %q", out)
	}

	// A fork takes its snapshot's shape; another is refused, and nothing is made.
	if msg := d.fails(2, "vm", "create", "bad", "--from", "base", "--cpus", "2"); !strings.Contains(msg, "vcpus") {
		t.Fatalf("a fork of another shape: %s", msg)
	}
	// A fork not yet started keeps its snapshot; started, it does not need it.
	d.must("vm", "create", "later", "--from", "base")
	if v := d.show("later"); v.Origin == nil || !v.Origin.Pending || v.State != "stopped" {
		t.Fatalf("a fork not started: %+v %s", v.Origin, v.State)
	}
	if msg := d.fails(5, "vm", "snapshot", "delete", "base"); !strings.Contains(msg, `"later"`) {
		t.Fatalf("deleting a snapshot a fork still needs: %s", msg)
	}
	d.must("vm", "delete", "later")
	for _, n := range names {
		d.must("vm", "delete", n)
	}
	d.must("vm", "snapshot", "delete", "base")
	if _, err := os.Stat(sn.Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir after delete: %v", err)
	}

	// vm fork: snapshot and fork in one step; the snapshot on the way goes.
	f := d.mustVM("vm", "fork", "tmpl", "twin")
	if f.State != "running" || f.GuestIP == tmpl.GuestIP || f.HostKey == tmpl.HostKey {
		t.Fatalf("vm fork: %s %s %s", f.State, f.GuestIP, f.HostKey)
	}
	if out := d.must("vm", "exec", "twin", "--", "hostname"); strings.TrimSpace(out) != "twin" {
		t.Fatalf("twin's hostname %q", out)
	}
	if sns := d.snapshots(); len(sns) != 0 {
		t.Fatalf("vm fork left snapshots: %+v", sns)
	}

	// A run-time identity change (issue 10): a new IP and host key through
	// the agent; ssh works with the new pin, the old pin is gone.
	kh, _ := os.ReadFile(d.stateDir + "/ssh/known_hosts")
	if !pinned(kh, f.GuestIP) {
		t.Fatalf("twin's ip %s is not pinned:\n%s", f.GuestIP, kh)
	}
	r := d.mustVM("vm", "reidentify", "--new-ip", "twin")
	if r.GuestIP == f.GuestIP || r.HostKey == f.HostKey || r.GuestIP == "" {
		t.Fatalf("reidentify: ip %s -> %s, key changed %v", f.GuestIP, r.GuestIP, r.HostKey != f.HostKey)
	}
	kh, _ = os.ReadFile(d.stateDir + "/ssh/known_hosts")
	if pinned(kh, f.GuestIP) || strings.Contains(string(kh), strings.Fields(f.HostKey)[1]) || !pinned(kh, r.GuestIP) || !strings.Contains(string(kh), strings.Fields(r.HostKey)[1]) {
		t.Fatalf("pins after reidentify (old %s, new %s):\n%s", f.GuestIP, r.GuestIP, kh)
	}
	if out := d.must("vm", "ssh", "--network", "twin", "--", "sh", "-c", "ip -o -4 addr show scope global | awk '{print $4}'"); !strings.HasPrefix(strings.TrimSpace(out), r.GuestIP+"/") {
		t.Fatalf("ssh to the new address: %q", out)
	}
	d.must("vm", "delete", "twin", "tmpl")

	// A warm image: vm run restores the warm snapshot and gives the guest
	// its own name; --cold boots.
	var warm api.Snapshot
	mustJSON(t, d.must("image", "warm", "default", "--cpus", "1", "--memory", "512M", "-o", "json"), &warm)
	if warm.Kind != "warm" || warm.VCPUs != 1 || warm.MemoryMiB != 512 {
		t.Fatalf("image warm: %+v", warm)
	}
	if vms := d.listVMs(); len(vms) != 0 {
		t.Fatalf("image warm left its template vm: %+v", vms)
	}
	if vmmKind() == "qemu" {
		// The template's RAM was a file, which the snapshot kept: its
		// state file holds the devices only, and warm starts map the file.
		state, err := os.Stat(filepath.Join(warm.Dir, "state.qemu"))
		if err != nil {
			t.Fatal(err)
		}
		mem, err := os.Stat(filepath.Join(warm.Dir, "memory.ram"))
		if err != nil {
			t.Fatalf("warm snapshot without its memory file: %v", err)
		}
		if state.Size() > 4<<20 || mem.Size() != 512<<20 || mem.Mode().Perm() != 0o600 {
			t.Fatalf("warm snapshot: state file %d bytes, memory file %d bytes mode %v", state.Size(), mem.Size(), mem.Mode().Perm())
		}
	}
	out := d.must("vm", "run", "--rm", "--cpus", "1", "--memory", "512M", "--vmm", vmmKind(), "--", "sh", "-c", "hostname; pgrep -c -x sshd >/dev/null && echo sshd")
	if lines := strings.Fields(out); len(lines) != 2 || !strings.HasPrefix(lines[0], "run-") || lines[1] != "sshd" {
		t.Fatalf("vm run from a warm image printed %q", out)
	}
	w := d.mustVM("vm", "create", "w1", "--cpus", "1", "--memory", "512M", "--vmm", vmmKind())
	if w.Origin == nil || !w.Origin.Warm || !w.Origin.Pending || w.Origin.SnapshotID != warm.ID {
		t.Fatalf("a create of the warm shape: origin %+v", w.Origin)
	}
	if show := d.must("vm", "show", "w1"); !strings.Contains(show, "warm start") {
		t.Fatalf("vm show does not say the vm is a warm start:\n%s", show)
	}
	// A warm start's network: its agent changed MAC and address with the
	// template's networkd already out of the way; a later boot of its disk
	// configures the same through networkd.
	d.must("vm", "start", "w1")
	for _, when := range []string{"warm start", "boot after a restart"} {
		var out string
		for deadline := time.Now().Add(bootTimeout); ; time.Sleep(time.Second) { // sshd may still be starting after the restart
			r, err := d.run("vm", "ssh", "--network", "w1", "--", "sh", "-c", "hostname; ip -o -4 addr show scope global | awk '{print $4}'")
			out = r.stdout
			if err == nil || when == "warm start" || time.Now().After(deadline) {
				break
			}
		}
		if f := strings.Fields(out); len(f) != 2 || f[0] != "w1" || !strings.HasPrefix(f[1], d.show("w1").GuestIP+"/") {
			t.Fatalf("%s: ssh over the network to w1 printed %q", when, out)
		}
		if when == "warm start" {
			d.must("vm", "restart", "w1")
		}
	}
	// A warm start's own snapshot (its RAM is its warm snapshot's file,
	// mapped privately) restores and forks like any other.
	d.mustVM("vm", "create", "w2", "--cpus", "1", "--memory", "512M", "--vmm", vmmKind(), "--start")
	d.must("vm", "exec", "w2", "--", "sh", "-c", "echo before >/tmp/mark; setsid sleep 1000 >/dev/null 2>&1 </dev/null &")
	d.must("vm", "snapshot", "create", "w2", "w2-snap")
	d.must("vm", "exec", "w2", "--", "sh", "-c", "echo after >/tmp/mark")
	d.must("vm", "restore", "w2", "w2-snap")
	if out := d.must("vm", "exec", "w2", "--", "sh", "-c", "cat /tmp/mark; pgrep -x sleep >/dev/null && echo sleeping"); strings.Fields(out)[0] != "before" || !strings.Contains(out, "sleeping") {
		t.Fatalf("a warm start restored to its own snapshot: %q, want the file as it was and the process still running", out)
	}
	d.mustVM("vm", "create", "w3", "--from", "w2-snap", "--start")
	if out := d.must("vm", "exec", "w3", "--", "sh", "-c", "cat /tmp/mark; hostname"); strings.Join(strings.Fields(out), " ") != "before w3" {
		t.Fatalf("a fork of a warm start's snapshot: %q", out)
	}
	d.must("vm", "delete", "w2", "w3")
	d.must("vm", "snapshot", "delete", "w2-snap")
	c := d.mustVM("vm", "create", "c1", "--cold", "--cpus", "1", "--memory", "512M", "--vmm", vmmKind())
	if c.Origin != nil {
		t.Fatalf("--cold: origin %+v", c.Origin)
	}
	// Another shape boots.
	if o := d.mustVM("vm", "create", "c2", "--cpus", "2", "--memory", "512M", "--vmm", vmmKind()).Origin; o != nil {
		t.Fatalf("another shape: origin %+v", o)
	}
	d.must("vm", "delete", "w1", "c1", "c2")
	// The warm snapshot is the image's: listed, deleted like any.
	d.must("vm", "snapshot", "delete", warm.Name)
	if _, err := os.Stat(warm.Dir); !os.IsNotExist(err) {
		t.Fatalf("warm snapshot dir after delete: %v", err)
	}
}

// mustVM runs a command that prints a VM and returns it (as JSON).
func (d *daemon) mustVM(args ...string) api.VM {
	d.t.Helper()
	var v api.VM
	mustJSON(d.t, d.must(append(args, "-o", "json")...), &v)
	if v.Name == "" {
		d.t.Fatalf("%s: no vm printed", fmt.Sprint(args))
	}
	return v
}

// pinned reports whether known_hosts content kh has a line for host.
func pinned(kh []byte, host string) bool {
	for _, l := range strings.Split(string(kh), "\n") {
		if f := strings.Fields(l); len(f) > 0 && slices.Contains(strings.Split(f[0], ","), host) {
			return true
		}
	}
	return false
}
