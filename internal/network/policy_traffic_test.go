package network

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/netpolicy"
)

// Addresses of the simulated outside world (TestPolicies, TestTraffic):
// an uplink from the test's host namespace to an "internet" namespace,
// which also holds a LAN host (a private address) and a metadata service
// (link-local), both routed by the host through the uplink.
const (
	hostUplink = "11.22.33.1" // the host's other address
	internetIP = "11.22.33.2" // public
	lanIP      = "192.168.77.2"
	metadataIP = "169.254.169.254"
)

// outside builds the internet namespace behind uplink vt-up.
func (e *env) outside() netns.NsHandle {
	t := e.t
	t.Helper()
	inet := e.netns("internet")
	e.veth("vt-up", inet, netip.MustParsePrefix(internetIP+"/24"), netip.Addr{})
	up, err := e.nl.LinkByName("vt-up")
	if err == nil {
		err = e.nl.AddrAdd(up, nlAddr(netip.MustParsePrefix(hostUplink+"/24")))
	}
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(inet)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{lanIP, metadataIP} {
		if err := h.AddrAdd(eth0, nlAddr(netip.MustParsePrefix(a+"/32"))); err != nil {
			t.Fatal(err)
		}
		dst := &net.IPNet{IP: net.ParseIP(a).To4(), Mask: net.CIDRMask(32, 32)}
		if err := e.nl.RouteAdd(&netlink.Route{Dst: dst, Gw: net.ParseIP(internetIP)}); err != nil {
			t.Fatalf("route to %s: %v", a, err)
		}
	}
	return inet
}

// vmGuest is guest (a veth in its own namespace on the bridge) with the
// rules ApplyVM gives VM owner under p, for the peer's real MAC.
func (e *env) vmGuest(role, hostEnd string, addr netip.Addr, owner string, p netpolicy.Policy) netns.NsHandle {
	t := e.t
	t.Helper()
	ns := e.guest(role, hostEnd, addr)
	v := VMNet{Owner: owner, Tap: hostEnd, IP: addr, MAC: peerMAC(t, ns), Policy: p}
	if err := e.m.ApplyVM(context.Background(), v); err != nil {
		t.Fatalf("ApplyVM %s: %v", owner, err)
	}
	return ns
}

func peerMAC(t *testing.T, ns netns.NsHandle) net.HardwareAddr {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return eth0.Attrs().HardwareAddr
}

// TestPolicies: five stand-in guests under different policies, each
// dialling every kind of destination over TCP and UDP; each reaches
// exactly what its policy says.
//
//	g1 .2 internet, network team ─┐
//	g2 .3 internet, network team ─┤
//	g3 .4 internet (isolated)    ─┼ banger0 10.201.0.1 [host] vt-up 11.22.33.1 ── internet 11.22.33.2
//	g4 .5 none + allows          ─┤                                                lan 192.168.77.2
//	g5 .6 internet + deny/allow  ─┘                                                metadata 169.254.169.254
//
// The LAN host is also the guests' resolver (Config.GuestDNS).
func TestPolicies(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.GuestDNS = []netip.Addr{netip.MustParseAddr(lanIP)} })
	ctx := context.Background()
	if err := e.m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	inet := e.outside()
	ip := func(last string) netip.Addr { return netip.MustParseAddr("10.201.0." + last) }
	team := []string{"team"}
	g1 := e.vmGuest("g1", "vt-g1", ip("2"), "vm1", netpolicy.Policy{Networks: team})
	g2 := e.vmGuest("g2", "vt-g2", ip("3"), "vm2", netpolicy.Policy{Networks: team})
	g3 := e.vmGuest("g3", "vt-g3", ip("4"), "vm3", netpolicy.Policy{})
	g4 := e.vmGuest("g4", "vt-g4", ip("5"), "vm4", netpolicy.Policy{Egress: netpolicy.EgressNone,
		Allow: []netpolicy.Rule{mustRule(lanIP + ":53/udp"), mustRule(internetIP + "/32:443/tcp")}})
	g5 := e.vmGuest("g5", "vt-g5", ip("6"), "vm5", netpolicy.Policy{
		Deny: []netpolicy.Rule{mustRule(internetIP + ":443")}, Allow: []netpolicy.Rule{mustRule(lanIP + "/32:80/tcp")}})

	for _, g := range []struct {
		ns   netns.NsHandle
		name string
	}{{g1, "g1"}, {g2, "g2"}, {g3, "g3"}, {g4, "g4"}, {g5, "g5"}} {
		serve(t, g.ns, g.name, "0.0.0.0:80")
		serveUDP(t, g.ns, g.name, "0.0.0.0:53")
	}
	for _, a := range []string{internetIP, lanIP, metadataIP} {
		serve(t, inet, a, a+":80")
		serve(t, inet, a, a+":443")
		serveUDP(t, inet, a, a+":53")
	}
	serve(t, e.host, "host-gw", "10.201.0.1:7000")
	serve(t, e.host, "host-uplink", hostUplink+":7001")
	serve(t, e.host, "host-any", "0.0.0.0:7002")
	serveUDP(t, e.host, "host-any", "0.0.0.0:7053")
	if err := e.m.Publish(ctx, "vm1", ip("2"), Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoTCP}); err != nil {
		t.Fatal(err)
	}

	yes := func(what string, ns netns.NsHandle, network, addr, want string) {
		t.Helper()
		expectAnswer(t, what, ns, network, addr, want)
	}
	no := func(what string, ns netns.NsHandle, network, addr string) {
		t.Helper()
		expectNoAnswer(t, what, ns, network, addr)
	}
	const masq = " " + hostUplink // what the outside sees of a guest

	t.Run("host", func(t *testing.T) {
		for _, g := range []struct {
			ns   netns.NsHandle
			name string
		}{{g1, "g1 (internet)"}, {g4, "g4 (none)"}} {
			no(g.name+" to the gateway's service", g.ns, "tcp4", "10.201.0.1:7000")
			no(g.name+" to a service on the host's other address", g.ns, "tcp4", hostUplink+":7001")
			no(g.name+" to a service on all addresses, via the gateway", g.ns, "tcp4", "10.201.0.1:7002")
			no(g.name+" to a service on all addresses, via the other address", g.ns, "tcp4", hostUplink+":7002")
			no(g.name+" to a udp service of the host", g.ns, "udp4", "10.201.0.1:7053")
		}
		// The host still reaches its guests (replies to its connections).
		yes("host to g1", e.host, "tcp4", "10.201.0.2:80", "g1 10.201.0.1")
		yes("host to g4 (none)", e.host, "udp4", "10.201.0.5:53", "g4 10.201.0.1")
		// ... and, without a guest's policy in the way, the outside world.
		yes("host to the internet", e.host, "tcp4", internetIP+":80", internetIP+masq)
	})

	t.Run("internet", func(t *testing.T) {
		yes("g1 to the internet", g1, "tcp4", internetIP+":80", internetIP+masq)
		yes("g1 to the internet, udp", g1, "udp4", internetIP+":53", internetIP+masq)
		yes("g3 to the internet", g3, "tcp4", internetIP+":443", internetIP+masq)
		no("g1 to the metadata service", g1, "tcp4", metadataIP+":80")
		no("g1 to the metadata service, udp", g1, "udp4", metadataIP+":53")
		no("g1 to the lan", g1, "tcp4", lanIP+":80")
		no("g1 to the lan, tcp 443", g1, "tcp4", lanIP+":443")
		yes("g1 to the guests' resolver on the lan", g1, "udp4", lanIP+":53", lanIP+masq)
	})

	t.Run("none with allows", func(t *testing.T) {
		yes("g4 to the allowed lan udp port", g4, "udp4", lanIP+":53", lanIP+masq)
		yes("g4 to the allowed internet tcp port", g4, "tcp4", internetIP+":443", internetIP+masq)
		no("g4 to the lan, tcp", g4, "tcp4", lanIP+":80")
		no("g4 to the internet, tcp 80", g4, "tcp4", internetIP+":80")
		no("g4 to the internet, udp 53", g4, "udp4", internetIP+":53")
		no("g4 to the metadata service", g4, "tcp4", metadataIP+":80")
		no("g4 to g1", g4, "tcp4", "10.201.0.2:80")
		no("g4 to a published port", g4, "tcp4", "10.201.0.1:8080")
	})

	t.Run("internet with deny and allow", func(t *testing.T) {
		no("g5 to the denied internet port, tcp", g5, "tcp4", internetIP+":443")
		yes("g5 to the internet, another port", g5, "tcp4", internetIP+":80", internetIP+masq)
		yes("g5 to the allowed lan tcp port", g5, "tcp4", lanIP+":80", lanIP+masq)
		no("g5 to the lan, another port", g5, "tcp4", lanIP+":443")
		no("g5 to the metadata service", g5, "tcp4", metadataIP+":80")
	})

	t.Run("vm to vm", func(t *testing.T) {
		guestsAcrossBridge(t, g1, g2, g3)
	})

	t.Run("published", func(t *testing.T) {
		yes("published, from the internet", inet, "tcp4", hostUplink+":8080", "g1 "+internetIP)
		yes("published, host to 127.0.0.1", e.host, "tcp4", "127.0.0.1:8080", "g1 10.201.0.1")
		// Not from guests: they reach nothing of the host.
		no("published, g3 via the gateway", g3, "tcp4", "10.201.0.1:8080")
		no("published, g3 via the host's other address", g3, "tcp4", hostUplink+":8080")
		no("published, g1 to itself via the gateway", g1, "tcp4", "10.201.0.1:8080")
	})

	// br_netfilter (Docker, Kubernetes) sends bridged IPv4 through the
	// inet hooks: the rules must give the same answers either way.
	t.Run("br_netfilter", func(t *testing.T) {
		key := "bridge/bridge-nf-call-iptables"
		if _, err := os.Stat(filepath.Join("/proc/sys/net", key)); err != nil {
			t.Fatalf("br_netfilter is not available here: %v", err)
		}
		for _, v := range []string{"1", "0"} {
			if err := ensureSysctl(e.host, key, v); err != nil {
				t.Fatal(err)
			}
			guestsAcrossBridge(t, g1, g2, g3)
			no("g1 to the gateway's service, call-iptables="+v, g1, "tcp4", "10.201.0.1:7000")
			no("g1 to the metadata service, call-iptables="+v, g1, "tcp4", metadataIP+":80")
		}
	})

	t.Run("spoofing", func(t *testing.T) {
		spoofing(t, e, g1, g2, g3, inet)
	})

	t.Run("remove", func(t *testing.T) {
		owners, err := e.m.VMs(ctx)
		if err != nil || strings.Join(owners, " ") != "vm1 vm2 vm3 vm4 vm5" {
			t.Fatalf("VMs = %v, %v", owners, err)
		}
		// A UDP flow of g3's, answered once; after RemoveVM the same flow
		// must not reach g3's address any more.
		flow := udpFlow(t, g3, "10.201.0.4:40999", inet, internetIP+":5300")
		if got := flow(); got != "reply" {
			t.Fatalf("g3's udp flow before RemoveVM: %q", got)
		}
		if err := e.m.RemoveVM(ctx, "vm3"); err != nil {
			t.Fatal(err)
		}
		if err := e.m.RemoveVM(ctx, "vm3"); err != nil {
			t.Errorf("RemoveVM again: %v", err)
		}
		if got := flow(); got == "reply" {
			t.Error("an established udp flow still reaches g3's address after RemoveVM")
		}
		no("g3 after RemoveVM, to the internet", g3, "tcp4", internetIP+":80")
		yes("g1 after g3's RemoveVM", g1, "tcp4", internetIP+":80", internetIP+masq)
		gone, err := e.m.RemoveOrphanVMs(ctx, func(o string) bool { return o == "vm1" || o == "vm4" })
		if err != nil || strings.Join(gone, " ") != "vm2 vm5" {
			t.Errorf("RemoveOrphanVMs = %v, %v; want vm2 vm5", gone, err)
		}
		no("g1 to g2 after g2's removal", g1, "tcp4", "10.201.0.3:80")
		yes("g1 after the sweep", g1, "tcp4", internetIP+":80", internetIP+masq)
		yes("g4 after the sweep", g4, "udp4", lanIP+":53", lanIP+masq)
		if err := e.m.Unpublish(ctx, "vm1"); err != nil {
			t.Fatal(err)
		}
		for _, o := range []string{"vm1", "vm4"} {
			if err := e.m.RemoveVM(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		// Nothing of any VM is left: no chain, no jump, no set.
		rs := ruleset(t, e.m)
		for _, s := range []string{"chain vm-", `"vm `} {
			if strings.Contains(rs, s) {
				t.Errorf("after removing every vm, the inet table still has %q:\n%s", s, rs)
			}
		}
		br := nftList(t, e, "bridge", DefaultTable)
		if strings.Contains(br, `"vm-`) || strings.Contains(br, `vm vm`) {
			t.Errorf("after removing every vm, the bridge table still has vm rules:\n%s", br)
		}
		inetList := nftList(t, e, "inet", DefaultTable)
		if strings.Contains(inetList, `"net-`) {
			t.Errorf("after removing every vm, a network set is left:\n%s", inetList)
		}
	})
}

// guestsAcrossBridge: g1 and g2 share network team and reach each other
// both ways, TCP and UDP, seeing each other's real address; g3 (isolated)
// reaches neither, nor they g3.
func guestsAcrossBridge(t *testing.T, g1, g2, g3 netns.NsHandle) {
	t.Helper()
	expectAnswer(t, "g1 to g2 (team)", g1, "tcp4", "10.201.0.3:80", "g2 10.201.0.2")
	expectAnswer(t, "g2 to g1 (team), udp", g2, "udp4", "10.201.0.2:53", "g1 10.201.0.3")
	expectNoAnswer(t, "g3 (isolated) to g1", g3, "tcp4", "10.201.0.2:80")
	expectNoAnswer(t, "g3 (isolated) to g2, udp", g3, "udp4", "10.201.0.3:53")
	expectNoAnswer(t, "g1 to g3 (isolated)", g1, "tcp4", "10.201.0.4:80")
}

// spoofing: g3 takes g1's address, then also its MAC. It gets nothing
// through either way, and g1 keeps its traffic.
func spoofing(t *testing.T, e *env, g1, g2, g3, inet netns.NsHandle) {
	h, err := netlink.NewHandleAt(g3)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	stolen := netip.MustParsePrefix("10.201.0.2/24")
	if err := h.AddrAdd(eth0, nlAddr(stolen)); err != nil {
		t.Fatal(err)
	}
	from := &net.TCPAddr{IP: net.ParseIP("10.201.0.2")}
	fromUDP := &net.UDPAddr{IP: net.ParseIP("10.201.0.2")}
	try := func(how string) {
		t.Helper()
		if got, err := askFrom(g3, "tcp4", from, internetIP+":80"); err == nil {
			t.Errorf("%s: g3 as g1 reached the internet: %q", how, got)
		}
		if got, err := askFrom(g3, "udp4", fromUDP, internetIP+":53"); err == nil {
			t.Errorf("%s: g3 as g1 reached the internet over udp: %q", how, got)
		}
		if got, err := askFrom(g3, "tcp4", from, "10.201.0.3:80"); err == nil {
			t.Errorf("%s: g3 as g1 reached g2 (g1's network): %q", how, got)
		}
		// The host still sends g1's traffic to g1.
		expectAnswer(t, how+": host to g1", e.host, "tcp4", "10.201.0.2:80", "g1 10.201.0.1")
		expectAnswer(t, how+": g2 to g1", g2, "tcp4", "10.201.0.2:80", "g1 10.201.0.3")
	}
	try("g1's address")
	// Nor one way: a spoofed datagram never arrives (its answer would go
	// to g1, so only the receiver can tell).
	sink := listenUDP(t, inet, internetIP+":5000")
	sendUDP(t, g3, fromUDP, internetIP+":5000", "spoofed")
	sendUDP(t, g1, nil, internetIP+":5000", "marker")
	if got := sink(); got != "marker from "+hostUplink {
		t.Errorf("the internet received %q first, want g1's marker (a spoofed datagram got through)", got)
	}

	// And g1's MAC too: now nothing from g3 passes the bridge, and the
	// bridge does not learn g1's MAC on g3's port. g3 is told the
	// gateway's MAC, so its IPv4 frames go out without any ARP first.
	mine := eth0.Attrs().HardwareAddr
	if err := h.LinkSetHardwareAddr(eth0, peerMAC(t, g1)); err != nil {
		t.Fatal(err)
	}
	br, err := e.nl.LinkByName(e.m.Bridge())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: eth0.Attrs().Index, State: netlink.NUD_PERMANENT, IP: net.ParseIP("10.201.0.1"), HardwareAddr: br.Attrs().HardwareAddr}); err != nil {
		t.Fatal(err)
	}
	expectNoAnswer(t, "g3 with g1's MAC, from its own address", g3, "tcp4", internetIP+":80")
	// The bridge would otherwise send g1's frames to g3 from now on.
	if port := fdbPort(t, e, peerMAC(t, g1)); port != "vt-g1" {
		t.Errorf("the bridge learned g1's MAC on port %q, want vt-g1", port)
	}
	try("g1's address and MAC")

	// Back to itself: g3 works again (the test could see it fail).
	if err := h.LinkSetHardwareAddr(eth0, mine); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrDel(eth0, nlAddr(stolen)); err != nil {
		t.Fatal(err)
	}
	expectAnswer(t, "g3 as itself again", g3, "tcp4", internetIP+":80", internetIP+" "+hostUplink)
}

// listenUDP listens on addr in ns; the function returned reads the next
// datagram: "PAYLOAD from SOURCE".
func listenUDP(t *testing.T, ns netns.NsHandle, addr string) func() string {
	t.Helper()
	var pc net.PacketConn
	err := inNetNS(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return func() string {
		buf := make([]byte, 100)
		pc.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err.Error()
		}
		return string(buf[:n]) + " from " + from.(*net.UDPAddr).IP.String()
	}
}

// sendUDP sends one datagram from ns (from local, when set).
func sendUDP(t *testing.T, ns netns.NsHandle, local *net.UDPAddr, addr, payload string) {
	t.Helper()
	err := inNetNS(ns, func() error {
		c, err := net.DialUDP("udp4", local, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(payload))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fdbPort is the bridge port the bridge forwards frames for mac to.
func fdbPort(t *testing.T, e *env, mac net.HardwareAddr) string {
	t.Helper()
	br, err := e.nl.LinkByName(e.m.Bridge())
	if err != nil {
		t.Fatal(err)
	}
	entries, err := e.nl.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range entries {
		if n.HardwareAddr.String() != mac.String() || n.MasterIndex != br.Attrs().Index {
			continue
		}
		if l, err := e.nl.LinkByIndex(n.LinkIndex); err == nil {
			return l.Attrs().Name
		}
	}
	return ""
}

// nftText is `nft list table FAMILY NAME` in the test's host namespace:
// rules, chains, sets and their elements, without handles; its lines
// sorted, as the order of the per-VM jumps does not matter.
func nftText(t *testing.T, e *env, family string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", e.nsName("host"), "nft", "list", "table", family, e.m.Table()).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table %s %s: %v: %s", family, e.m.Table(), err, out)
	}
	lines := strings.Split(string(out), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestApplyVMLifecycle: ApplyVM is idempotent and replaces a VM's rules,
// network sets follow their members, a restarted daemon (a new Manager)
// finds every VM's rules, EnsureHost keeps them, bad input changes
// nothing, and Teardown leaves no table behind.
func TestApplyVMLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.m
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	mac := func(b byte) net.HardwareAddr { return net.HardwareAddr{0x06, 0xfc, 0, 0, 0, b} }
	a := VMNet{Owner: "vma", Tap: "tap-fc-a", IP: netip.MustParseAddr("10.201.0.2"), MAC: mac(2), Policy: netpolicy.Policy{Networks: []string{"x", "y"}}}
	b := VMNet{Owner: "vmb", Tap: "tap-fc-b", IP: netip.MustParseAddr("10.201.0.3"), MAC: mac(3), Policy: netpolicy.Policy{Egress: netpolicy.EgressNone, Networks: []string{"y"}}}
	// A VM's rules go in with no tap yet (the daemon applies them before
	// the VMM opens it): the rules name the tap.
	for _, v := range []VMNet{a, b} {
		if err := m.ApplyVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	sets := func() map[string]string {
		t.Helper()
		c, err := m.nft()
		if err != nil {
			t.Fatal(err)
		}
		st, ok, err := m.readVMs(c)
		if err != nil || !ok {
			t.Fatalf("readVMs: %v %v", ok, err)
		}
		out := map[string]string{}
		for name, addrs := range st.sets {
			s := make([]string, len(addrs))
			for i, a := range addrs {
				s[i] = a.String()
			}
			slices.Sort(s)
			out[name] = strings.Join(s, " ")
		}
		return out
	}
	if got, want := sets(), map[string]string{"net-x": "10.201.0.2", "net-y": "10.201.0.2 10.201.0.3"}; !maps.Equal(got, want) {
		t.Errorf("sets = %v, want %v", got, want)
	}
	inet, bridge := nftText(t, e, "inet"), nftText(t, e, "bridge")
	if err := m.ApplyVM(ctx, a); err != nil {
		t.Fatal(err)
	}
	if nftText(t, e, "inet") != inet || nftText(t, e, "bridge") != bridge {
		t.Errorf("ApplyVM of the same VM again changed the tables:\n%s\n%s\nwant:\n%s\n%s", nftText(t, e, "inet"), nftText(t, e, "bridge"), inet, bridge)
	}

	// A new policy replaces the old one: one jump per VM, sets follow.
	a2 := a
	a2.Policy = netpolicy.Policy{Egress: netpolicy.EgressNone, Networks: []string{"z"}}
	if err := m.ApplyVM(ctx, a2); err != nil {
		t.Fatal(err)
	}
	if got, want := sets(), map[string]string{"net-y": "10.201.0.3", "net-z": "10.201.0.2"}; !maps.Equal(got, want) {
		t.Errorf("sets after the policy change = %v, want %v", got, want)
	}
	inet = nftText(t, e, "inet")
	if n := strings.Count(inet, `comment "vm vma `); n != 1 {
		t.Errorf("%d jumps for vma after the policy change, want 1:\n%s", n, inet)
	}
	if strings.Contains(inet, "internet: not") || !strings.Contains(inet, "chain vm-vma {") {
		t.Errorf("vma's chain is not its new policy (none):\n%s", inet)
	}
	if got := strings.Count(nftText(t, e, "bridge"), `comment "vm vma `); got != 1 {
		t.Errorf("%d port jumps for vma, want 1", got)
	}

	// Bad input is refused and changes nothing.
	inet, bridge = nftText(t, e, "inet"), nftText(t, e, "bridge")
	for _, bad := range []VMNet{
		{Owner: "vmc", Tap: "tap-fc-c", IP: netip.MustParseAddr("10.201.0.4"), MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}},
		{Owner: "vmc", Tap: "tap-fc-c", IP: netip.MustParseAddr("10.99.0.4"), MAC: mac(4)},
		{Owner: "vmc", Tap: "tap-fc-c", IP: netip.MustParseAddr("10.201.0.1"), MAC: mac(4)},
		{Owner: "vm c", Tap: "tap-fc-c", IP: netip.MustParseAddr("10.201.0.4"), MAC: mac(4)},
		{Owner: "vmc", Tap: "tap/c", IP: netip.MustParseAddr("10.201.0.4"), MAC: mac(4)},
		{Owner: "vmc", Tap: "tap-fc-c", IP: netip.MustParseAddr("10.201.0.4"), MAC: mac(4), Policy: netpolicy.Policy{Egress: "all"}},
		{Owner: "vmc", Tap: "tap-fc-c", IP: netip.MustParseAddr("10.201.0.4"), MAC: mac(4), Policy: netpolicy.Policy{Networks: []string{"A B"}}},
	} {
		if err := m.ApplyVM(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ApplyVM(%+v) = %v, want invalid argument", bad, err)
		}
	}
	if nftText(t, e, "inet") != inet || nftText(t, e, "bridge") != bridge {
		t.Error("a refused ApplyVM changed the tables")
	}

	// A restarted daemon finds both VMs; EnsureHost keeps their rules.
	m2, err := New(Config{Pool: m.Pool(), NetNS: e.host})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	if owners, err := m2.VMs(ctx); err != nil || strings.Join(owners, " ") != "vma vmb" {
		t.Errorf("VMs after a restart = %v, %v", owners, err)
	}
	if nftText(t, e, "inet") != inet || nftText(t, e, "bridge") != bridge {
		t.Error("EnsureHost changed the VMs' rules")
	}
	if err := m2.RemoveVM(ctx, "vmb"); err != nil {
		t.Fatal(err)
	}
	if got, want := sets(), map[string]string{"net-z": "10.201.0.2"}; !maps.Equal(got, want) {
		t.Errorf("sets after removing vmb = %v, want %v", got, want)
	}

	// Teardown removes both tables, and with them every VM's rules.
	if err := m.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", e.nsName("host"), "nft", "list", "tables").CombinedOutput()
	if err != nil || strings.Contains(string(out), DefaultTable) {
		t.Errorf("tables after Teardown: %s %v", out, err)
	}
	if err := m.RemoveVM(ctx, "vma"); err != nil {
		t.Errorf("RemoveVM with no tables: %v", err)
	}
	if err := m.ApplyVM(ctx, a); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("ApplyVM with no tables = %v, want failed precondition", err)
	}
}

// udpFlow opens a UDP socket on local in ns and one on remote in peer,
// and sends a datagram from local to remote so that the flow exists. The
// function returned makes remote answer on the same flow, and returns
// what local received ("reply") or the error.
func udpFlow(t *testing.T, ns netns.NsHandle, local string, peer netns.NsHandle, remote string) func() string {
	t.Helper()
	var lc, rc net.PacketConn
	err := inNetNS(ns, func() error {
		var err error
		lc, err = net.ListenPacket("udp4", local)
		return err
	})
	if err == nil {
		err = inNetNS(peer, func() error {
			var err error
			rc, err = net.ListenPacket("udp4", remote)
			return err
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close(); rc.Close() })
	if _, err := lc.WriteTo([]byte("hi"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(remote))); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	rc.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, from, err := rc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("the flow's first datagram did not arrive: %v", err)
	}
	return func() string {
		if _, err := rc.WriteTo([]byte("reply"), from); err != nil {
			return err.Error()
		}
		lc.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := lc.ReadFrom(buf)
		if err != nil {
			return err.Error()
		}
		return string(buf[:n])
	}
}

// TestSweepManyVMs: the startup sweep removes any number of orphans (one
// batch for all of them overflows the netlink socket) and keeps the VMs it
// is told to.
func TestSweepManyVMs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := 2; i < 2+n; i++ {
		v := VMNet{
			Owner: fmt.Sprintf("vm%d", i), Tap: fmt.Sprintf("tap-fc-%d", i),
			IP: netip.AddrFrom4([4]byte{10, 201, 0, byte(i)}), MAC: net.HardwareAddr{6, 0xfc, 0, 0, 0, byte(i)},
			Policy: netpolicy.Policy{Networks: []string{"default"}, Allow: []netpolicy.Rule{mustRule("10.0.0.0/8:443/tcp")}},
		}
		if err := e.m.ApplyVM(ctx, v); err != nil {
			t.Fatalf("ApplyVM %s: %v", v.Owner, err)
		}
	}
	gone, err := e.m.RemoveOrphanVMs(ctx, func(o string) bool { return o == "vm7" })
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != n-1 || slices.Contains(gone, "vm7") {
		t.Errorf("swept %d vms (vm7 among them: %v), want %d", len(gone), slices.Contains(gone, "vm7"), n-1)
	}
	if owners, err := e.m.VMs(ctx); err != nil || strings.Join(owners, " ") != "vm7" {
		t.Errorf("VMs after the sweep = %v, %v; want vm7", owners, err)
	}
	if inet := nftText(t, e, "inet"); !strings.Contains(inet, "elements = { 10.201.0.7 }") {
		t.Errorf("network set after the sweep is not vm7's address alone:\n%s", inet)
	}
}
