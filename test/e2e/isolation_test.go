package e2e

import (
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/network"
)

// The simulated world of the isolation test, seen from the daemon's
// namespace (the host): a veth to a second namespace playing the internet
// (publicIP, a public address) and a metadata service on its link-local
// address; the host's own end of the veth is hostIP.
const (
	publicIP   = "11.0.0.1"
	hostIP     = "11.0.0.2"
	metadataIP = "169.254.169.254"
)

// testIsolation (issue 14) boots three Debian guests and checks, from
// inside them, what each policy lets through:
//
//	open:   the default (egress internet, isolated)
//	peer:   --network team
//	closed: --network team --egress none --allow publicIP:7001/udp --publish 12223:22
func testIsolation(t *testing.T, d *daemon) {
	out := d.addOutside(t)
	// The three boot together: under TCG on a loaded host one boot can
	// take minutes.
	open := d.bootVM("open")
	peer := d.bootVM("peer", "--network", "team")
	closed := d.bootVM("closed", "--network", "team", "--egress", "none", "--allow", publicIP+":7001/udp", "--publish", "12223:22")
	for _, name := range []string{"open", "peer", "closed"} {
		d.waitSSH(name, 15*time.Minute)
	}
	gw := gatewayOf(t, open.GuestIP)

	host := listen(t, d.netns, "tcp/"+gw+":7000", "udp/"+gw+":7000", "tcp/"+hostIP+":7000", "udp/"+hostIP+":7000")
	world := listen(t, out, "tcp/"+publicIP+":7000", "udp/"+publicIP+":7000", "udp/"+publicIP+":7001",
		"tcp/"+publicIP+":7002", "udp/"+publicIP+":7002", "tcp/"+metadataIP+":80", "udp/"+metadataIP+":7000")

	t.Run("show", func(t *testing.T) {
		d := d.with(t)
		for name, want := range map[string]string{
			"open":   "egress internet; isolated",
			"closed": "egress none; allow 11.0.0.1:7001/udp; networks team",
		} {
			if s := d.must("vm", "show", name); !strings.Contains(s, "Network:") || !strings.Contains(s, want) {
				t.Errorf("vm show %s does not print %q:\n%s", name, want, s)
			}
		}
		if p := d.show("closed").Network; p.Egress != "none" || !slices.Equal(p.Networks, []string{"team"}) || !slices.Equal(p.Allow, []string{publicIP + ":7001/udp"}) {
			t.Errorf("vm show -o json network: %+v", p)
		}
	})

	t.Run("internet-not-host", func(t *testing.T) {
		d := d.with(t)
		// Public destinations answer (the control)...
		if got := d.tcpFrom("open", publicIP, "7000"); got != "HELLO" {
			t.Fatalf("open -> %s:7000 (public, egress internet): %s", publicIP, got)
		}
		// ...the host's own addresses and the metadata service do not.
		for _, dst := range []string{gw + ":7000", hostIP + ":7000", metadataIP + ":80"} {
			h, p, _ := net.SplitHostPort(dst)
			if got := d.tcpFrom("open", h, p); got == "HELLO" {
				t.Errorf("open reached %s over tcp", dst)
			}
		}
		for _, dst := range []string{gw + ":7000", hostIP + ":7000", metadataIP + ":7000", publicIP + ":7000"} {
			d.udpFrom("open", dst, "open-udp")
		}
		world.await(t, "udp/"+publicIP+":7000", "open-udp") // the control: sent last, through the same host
		time.Sleep(time.Second)                             // let any datagram sent before it land too
		for _, l := range []string{"tcp/" + gw + ":7000", "udp/" + gw + ":7000", "tcp/" + hostIP + ":7000", "udp/" + hostIP + ":7000"} {
			if got := host.got(l); len(got) != 0 {
				t.Errorf("the host's listener %s heard a guest: %v", l, got)
			}
		}
		for _, l := range []string{"tcp/" + metadataIP + ":80", "udp/" + metadataIP + ":7000"} {
			if got := world.got(l); len(got) != 0 {
				t.Errorf("the metadata listener %s heard a guest: %v", l, got)
			}
		}
	})

	t.Run("egress-none", func(t *testing.T) {
		d := d.with(t)
		for _, dst := range []string{publicIP + ":7000", metadataIP + ":80", gw + ":7000"} {
			h, p, _ := net.SplitHostPort(dst)
			if got := d.tcpFrom("closed", h, p); got == "HELLO" {
				t.Errorf("closed (egress none) reached %s over tcp", dst)
			}
		}
		d.udpFrom("closed", publicIP+":7000", "closed-udp")
		d.udpFrom("closed", publicIP+":7001", "closed-allowed") // its --allow rule: the control
		world.await(t, "udp/"+publicIP+":7001", "closed-allowed")
		time.Sleep(time.Second)
		if got := world.got("udp/" + publicIP + ":7000"); slices.Contains(got, "closed-udp") {
			t.Errorf("closed (egress none) sent a datagram to %s:7000", publicIP)
		}
	})

	t.Run("vm-to-vm", func(t *testing.T) {
		d := d.with(t)
		for _, c := range []struct {
			from, to string
			reach    bool
		}{
			{"open", peer.GuestIP, false}, {"peer", open.GuestIP, false},
			{"peer", closed.GuestIP, true}, {"closed", peer.GuestIP, true},
		} {
			got := d.tcpFrom(c.from, c.to, "22")
			if reached := strings.HasPrefix(got, "SSH-2"); reached != c.reach {
				t.Errorf("%s -> %s:22: %s (want reachable=%v)", c.from, c.to, got, c.reach)
			}
		}
	})

	t.Run("published-port", func(t *testing.T) {
		d := d.with(t)
		if got := d.netnsTry(gw + ":12223"); !strings.HasPrefix(got, "SSH-2.0") {
			t.Errorf("the published port from the host: %q", got)
		}
		if got := nsTry(out, hostIP+":12223"); !strings.HasPrefix(got, "SSH-2.0") {
			t.Errorf("the published port from outside: %q", got)
		}
		if got := d.tcpFrom("open", gw, "12223"); got != "timeout" {
			t.Errorf("a guest reached a published port through the gateway: %q (want a timeout)", got)
		}
	})

	t.Run("spoofing", func(t *testing.T) {
		d := d.with(t)
		// open takes peer's IP, then its MAC too; from each identity it
		// sends a datagram and a connection to the world and connects to
		// closed (which peer reaches); then it restores its own and sends
		// the control. The script runs detached: open's own address is
		// gone while it runs, and with it the exec's ssh.
		script := fmt.Sprintf(`exec >/tmp/spoof.log 2>&1
dev=$(ip -o -4 route show default | awk '{print $5}')
mine=$(ip -o -4 addr show dev "$dev" | awk '{print $4}')
mymac=$(cat /sys/class/net/$dev/address)
echo x >/dev/udp/%[4]s/9; sleep 1
gwmac=$(ip neigh show %[4]s dev "$dev" | awk '{print $3}')
echo "dev $dev mine $mine mac $mymac gateway mac $gwmac"
probe() {
  echo "spoof-$1" >/dev/udp/%[1]s/7002
  timeout 4 bash -c 'exec 3<>/dev/tcp/%[1]s/7002 && head -c 5 <&3' && echo "TCP-WORLD-$1"
  timeout 4 bash -c 'exec 3<>/dev/tcp/%[2]s/22 && head -c 7 <&3' && echo "TCP-CLOSED-$1"
}
ip addr flush dev "$dev"; ip addr add %[3]s/24 dev "$dev"; ip route replace default via %[4]s dev "$dev"
# The gateway's MAC is pinned: the frames leave even though ARP with a
# stolen address gets no answer.
ip neigh replace %[4]s lladdr "$gwmac" dev "$dev" nud permanent
probe ip
ip link set dev "$dev" address %[5]s
probe mac
ip link set dev "$dev" address "$mymac"
ip addr flush dev "$dev"; ip addr add "$mine" dev "$dev"; ip route replace default via %[4]s dev "$dev"
ip neigh del %[4]s dev "$dev"
sleep 1
echo after >/dev/udp/%[1]s/7002
touch /tmp/spoof.done
`, publicIP, closed.GuestIP, peer.GuestIP, gw, network.MACFor(peer.ID))
		d.must("vm", "exec", "open", "--", "sudo", "bash", "-c", "setsid bash -c '"+strings.ReplaceAll(script, "'", `'"'"'`)+"' </dev/null >/dev/null 2>&1 &")
		world.await(t, "udp/"+publicIP+":7002", "after")
		deadline := time.Now().Add(90 * time.Second)
		for {
			if _, err := d.run("vm", "exec", "open", "--", "test", "-e", "/tmp/spoof.done"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("open did not come back after the spoofing script")
			}
			time.Sleep(2 * time.Second)
		}
		log := d.must("vm", "exec", "open", "--", "cat", "/tmp/spoof.log")
		if strings.Contains(log, "TCP-") {
			t.Errorf("a spoofing guest got a connection through:\n%s", log)
		}
		for _, m := range world.got("udp/" + publicIP + ":7002") {
			if strings.HasPrefix(m, "spoof-") {
				t.Errorf("a datagram sent with peer's identity got out: %q", m)
			}
		}
		if got := world.got("tcp/" + publicIP + ":7002"); len(got) != 0 {
			t.Errorf("a connection with peer's identity got out: %v", got)
		}
		// peer is untouched: it still reaches closed.
		if got := d.tcpFrom("peer", closed.GuestIP, "22"); !strings.HasPrefix(got, "SSH-2") {
			t.Errorf("peer -> closed after open's spoofing: %s", got)
		}
	})

	t.Run("set", func(t *testing.T) {
		d := d.with(t)
		if e := d.fails(5, "vm", "set", "open", "--egress", "none"); !strings.Contains(e, "stop") {
			t.Errorf("vm set on a running vm: %s", e)
		}
		d.must("vm", "stop", "open")
		d.fails(2, "vm", "set", "open", "--egress", "bogus")
		d.fails(2, "vm", "set", "open", "--allow", "10.0.0.0/33")
		if s := d.must("vm", "set", "open", "--egress", "none", "--network", "team"); !strings.Contains(s, "egress none; networks team") {
			t.Errorf("vm set printed:\n%s", s)
		}
		if p := d.show("open").Network; p.Egress != "none" || !slices.Equal(p.Networks, []string{"team"}) {
			t.Errorf("policy after set: %+v", p)
		}
	})
	d.must("vm", "delete", "open", "peer", "closed")
}

// bootVM creates and starts a small Debian VM without waiting for it.
func (d *daemon) bootVM(name string, extra ...string) api.VM {
	d.t.Helper()
	d.must(append([]string{"vm", "create", name, "--cpus", "1", "--memory", "512M", "--vmm", vmmKind()}, extra...)...)
	d.must("vm", "start", name)
	return d.show(name)
}

// waitSSH waits until the VM's SSH answers (vm start --wait on a running
// VM), for up to timeout.
func (d *daemon) waitSSH(name string, timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r, err := d.run("vm", "start", "--wait", "--wait-timeout", "2m", name)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("vm %s: ssh not ready after %s: %v %s", name, timeout, err, r.stderr)
		}
	}
}

// addOutside makes the namespace playing the internet and links it to the
// daemon's: publicIP and metadataIP there, hostIP and a default route here.
func (d *daemon) addOutside(t *testing.T) string {
	t.Helper()
	out := d.netns + "-out"
	cmds := [][]string{
		{"ip", "netns", "add", out},
		{"ip", "-n", out, "link", "set", "lo", "up"},
		{"ip", "-n", d.netns, "link", "add", "vout", "type", "veth", "peer", "name", "vin", "netns", out},
		{"ip", "-n", d.netns, "addr", "add", hostIP + "/24", "dev", "vout"},
		{"ip", "-n", d.netns, "link", "set", "vout", "up"},
		{"ip", "-n", out, "addr", "add", publicIP + "/24", "dev", "vin"},
		{"ip", "-n", out, "addr", "add", metadataIP + "/32", "dev", "lo"},
		{"ip", "-n", out, "link", "set", "vin", "up"},
		{"ip", "-n", d.netns, "route", "add", "default", "via", publicIP},
	}
	t.Cleanup(func() {
		exec.Command("ip", "-n", d.netns, "link", "del", "vout").Run()
		if b, err := exec.Command("ip", "netns", "del", out).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", out, err, b)
		}
	})
	for _, c := range cmds {
		if b, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(c, " "), err, b)
		}
	}
	return out
}

// tcpFrom is what guest vm gets connecting to host:port: the first bytes
// the server sends, "refused", or "timeout" (nothing answered in 4 s).
func (d *daemon) tcpFrom(vm, host, port string) string {
	d.t.Helper()
	r, _ := d.run("vm", "exec", vm, "--", "timeout", "4", "bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port+" && head -c 7 <&3")
	switch {
	case r.code == 0 && r.stdout != "":
		return strings.TrimSpace(r.stdout)
	case strings.Contains(r.stderr, "Connection refused"):
		return "refused"
	case r.code == 124:
		return "timeout"
	}
	return fmt.Sprintf("exit %d: %s", r.code, strings.TrimSpace(r.stderr))
}

// udpFrom sends one datagram holding msg from guest vm to addr.
func (d *daemon) udpFrom(vm, addr, msg string) {
	d.t.Helper()
	h, p, _ := net.SplitHostPort(addr)
	d.must("vm", "exec", vm, "--", "bash", "-c", "echo "+msg+" >/dev/udp/"+h+"/"+p)
}

// nsTry is netnsTry from namespace ns.
func nsTry(ns, addr string) string {
	d := &daemon{netns: ns}
	return d.netnsTry(addr)
}

// listeners records what reaches TCP and UDP sockets opened in a network
// namespace: per "proto/addr", one entry per connection ("conn") or
// datagram (its text).
type listeners struct {
	mu   sync.Mutex
	hits map[string][]string
	cond *sync.Cond
}

// listen opens each "tcp/IP:PORT" or "udp/IP:PORT" in namespace ns; TCP
// connections are greeted with "HELLO". t.Cleanup closes them.
func listen(t *testing.T, ns string, specs ...string) *listeners {
	t.Helper()
	l := &listeners{hits: map[string][]string{}}
	l.cond = sync.NewCond(&l.mu)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	var opened []func() error
	var openErr error
	for _, s := range specs {
		proto, addr, _ := strings.Cut(s, "/")
		if proto == "tcp" {
			ln, err := net.Listen("tcp4", addr)
			if err != nil {
				openErr = err
				break
			}
			opened = append(opened, ln.Close)
			go l.serveTCP(s, ln)
		} else {
			pc, err := net.ListenPacket("udp4", addr)
			if err != nil {
				openErr = err
				break
			}
			opened = append(opened, pc.Close)
			go l.serveUDP(s, pc)
		}
	}
	if err := netns.Set(orig); err != nil {
		// This thread is in the wrong namespace: let it die with the goroutine.
		t.Fatalf("back to the test's namespace: %v", err)
	}
	runtime.UnlockOSThread()
	t.Cleanup(func() {
		for _, c := range opened {
			c()
		}
	})
	if openErr != nil {
		t.Fatalf("listen in %s: %v", ns, openErr)
	}
	return l
}

func (l *listeners) record(spec, what string) {
	l.mu.Lock()
	l.hits[spec] = append(l.hits[spec], what)
	l.cond.Broadcast()
	l.mu.Unlock()
}

func (l *listeners) serveTCP(spec string, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		l.record(spec, "conn from "+c.RemoteAddr().String())
		c.Write([]byte("HELLO\n"))
		c.Close()
	}
}

func (l *listeners) serveUDP(spec string, pc net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		l.record(spec, strings.TrimSpace(string(buf[:n])))
	}
}

// got is what spec heard so far.
func (l *listeners) got(spec string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.hits[spec])
}

// await waits until spec heard want (up to two minutes: guests under TCG
// are slow).
func (l *listeners) await(t *testing.T, spec, want string) {
	t.Helper()
	done := make(chan struct{})
	timer := time.AfterFunc(2*time.Minute, func() {
		l.mu.Lock()
		close(done)
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer timer.Stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for !slices.Contains(l.hits[spec], want) {
		select {
		case <-done:
			t.Fatalf("%s did not hear %q; it heard %v", spec, want, l.hits[spec])
		default:
		}
		l.cond.Wait()
	}
}
