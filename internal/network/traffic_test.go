package network

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/banger-vm/banger/internal/netpolicy"
)

// TestTraffic sends real packets: two stand-in guests on the bridge (veth
// peers in their own namespaces, in place of taps), and an "internet"
// namespace behind an uplink of the test's host namespace.
//
//	guest1 10.201.0.2 ─┐
//	                   banger0 10.201.0.1 [host ns] vt-up 11.22.33.1 ── 11.22.33.2 internet
//	guest2 10.201.0.3 ─┘
//
// Both guests have the default policy (internet) and share a network.
func TestTraffic(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.m
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	g1IP, g2IP := netip.MustParseAddr("10.201.0.2"), netip.MustParseAddr("10.201.0.3")
	shared := netpolicy.Policy{Networks: []string{"default"}}
	g1 := e.vmGuest("guest1", "vt-g1", g1IP, "vm1", shared)
	g2 := e.vmGuest("guest2", "vt-g2", g2IP, "vm2", shared)
	inet := e.outside()

	serve(t, e.host, "host", "10.201.0.1:7000")
	serve(t, g1, "guest1", "0.0.0.0:80")
	serve(t, g2, "guest2", "0.0.0.0:80")
	serve(t, inet, "internet", "11.22.33.2:7002")
	serveUDP(t, g2, "guest2", "0.0.0.0:53")

	// Guests reach each other (no NAT between them), not the host.
	expectNoAnswer(t, "guest1 to the gateway", g1, "tcp4", "10.201.0.1:7000")
	expectAnswer(t, "guest1 to guest2", g1, "tcp4", "10.201.0.3:80", "guest2 10.201.0.2")
	// Egress NAT: the internet sees the host's outer address, and could not
	// even answer the pool address (it has no route to it).
	expectAnswer(t, "guest1 to the internet", g1, "tcp4", "11.22.33.2:7002", "internet 11.22.33.1")
	expectAnswer(t, "guest2 to the internet", g2, "tcp4", "11.22.33.2:7002", "internet 11.22.33.1")
	// Nothing published yet.
	expectNoAnswer(t, "unpublished port from the internet", inet, "tcp4", "11.22.33.1:8080")

	if err := m.Publish(ctx, "vm1", g1IP, Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(ctx, "vm2", g2IP, Publish{HostPort: 5353, GuestPort: 53, Proto: ProtoUDP}); err != nil {
		t.Fatal(err)
	}
	// From the host itself: loopback (masqueraded to the gateway: the guest
	// cannot answer 127.0.0.1), its outer address, the gateway.
	expectAnswer(t, "published, host to 127.0.0.1", e.host, "tcp4", "127.0.0.1:8080", "guest1 10.201.0.1")
	expectAnswer(t, "published, host to its outer address", e.host, "tcp4", "11.22.33.1:8080", "guest1 11.22.33.1")
	expectAnswer(t, "published, host to the gateway", e.host, "tcp4", "10.201.0.1:8080", "guest1 10.201.0.1")
	// From outside: the guest sees the real client.
	expectAnswer(t, "published, from the internet", inet, "tcp4", "11.22.33.1:8080", "guest1 11.22.33.2")
	// Not from guests (they reach guest1 directly on their network).
	expectNoAnswer(t, "published, guest2 via the gateway", g2, "tcp4", "10.201.0.1:8080")
	// UDP.
	expectAnswer(t, "published udp, from the internet", inet, "udp4", "11.22.33.1:5353", "guest2 11.22.33.2")
	expectAnswer(t, "published udp, host to 127.0.0.1", e.host, "udp4", "127.0.0.1:5353", "guest2 10.201.0.1")
	// Guests' own traffic to port 8080 elsewhere is not caught by the DNAT.
	serve(t, inet, "internet", "11.22.33.2:8080")
	expectAnswer(t, "guest to port 8080 of the internet", g2, "tcp4", "11.22.33.2:8080", "internet 11.22.33.1")

	// Only published ports get in: with a route to the guest network, the
	// internet still cannot reach a guest directly.
	h, err := netlink.NewHandleAt(inet)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	dst := &net.IPNet{IP: net.IPv4(10, 201, 0, 0), Mask: net.CIDRMask(24, 32)}
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: net.IPv4(11, 22, 33, 1)}); err != nil {
		t.Fatal(err)
	}
	expectNoAnswer(t, "internet straight to guest1", inet, "tcp4", "10.201.0.2:80")

	// Unpublish: gone for vm1 from everywhere, vm2's port untouched.
	if err := m.Unpublish(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	expectNoAnswer(t, "unpublished, host to 127.0.0.1", e.host, "tcp4", "127.0.0.1:8080")
	expectNoAnswer(t, "unpublished, from the internet", inet, "tcp4", "11.22.33.1:8080")
	expectNoAnswer(t, "unpublished, guest2 via the gateway", g2, "tcp4", "10.201.0.1:8080")
	expectAnswer(t, "vm2's port after vm1's unpublish", inet, "udp4", "11.22.33.1:5353", "guest2 11.22.33.2")

	// A UDP flow is translated by its conntrack entry, not by the rule: after
	// Unpublish the same flow (same source port) must not reach the guest
	// any more, so Unpublish forgets the flows too.
	flow := &net.UDPAddr{IP: net.IPv4(11, 22, 33, 2), Port: 40053}
	if got, err := askFrom(inet, "udp4", flow, "11.22.33.1:5353"); err != nil || got != "guest2 11.22.33.2" {
		t.Fatalf("udp flow before Unpublish: %q, %v", got, err)
	}
	if err := m.Unpublish(ctx, "vm2"); err != nil {
		t.Fatal(err)
	}
	if got, err := askFrom(inet, "udp4", flow, "11.22.33.1:5353"); err == nil {
		t.Errorf("the udp flow still reaches the guest after Unpublish: %q", got)
	}
	expectNoAnswer(t, "unpublished udp", inet, "udp4", "11.22.33.1:5353")
}

// TestLoopbackGuard: route_localnet on the bridge (for published ports on
// 127.0.0.1) would let a guest reach the host's loopback-only services,
// and without the input chain a guest reaches every service of the host.
// A guest, speaking raw frames through a real tap, sends SYNs: with
// banger's chains nothing comes back; without them the host answers (the
// attacks are real). EnsureHost puts the chains back.
func TestLoopbackGuard(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.m
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	const tap = "tap-fc-00000009"
	if err := m.CreateTap(ctx, tap, 0); err != nil {
		t.Fatal(err)
	}
	f := openTap(t, e.host, tap)
	br, err := e.nl.LinkByName(DefaultBridge)
	if err != nil {
		t.Fatal(err)
	}
	guestMAC := net.HardwareAddr{0x06, 0xfc, 0, 0, 0, 9}
	guestIP := netip.MustParseAddr("10.201.0.9")
	if err := m.ApplyVM(ctx, VMNet{Owner: "vm9", Tap: tap, IP: guestIP, MAC: guestMAC}); err != nil {
		t.Fatal(err)
	}
	// Spare the guest from answering ARP: the host knows its MAC.
	if err := e.nl.NeighAdd(&netlink.Neigh{LinkIndex: br.Attrs().Index, State: netlink.NUD_PERMANENT, IP: guestIP.AsSlice(), HardwareAddr: guestMAC}); err != nil {
		t.Fatal(err)
	}
	serve(t, e.host, "loopback-only", "127.0.0.1:7777")
	serve(t, e.host, "gateway", "10.201.0.1:7778")
	brMAC := br.Attrs().HardwareAddr

	port := uint16(40000)
	syn := func(dst netip.AddrPort) (answered bool) {
		t.Helper()
		port++
		src := netip.AddrPortFrom(guestIP, port)
		_, err := exchange(f, tcpSYN(brMAC, guestMAC, src, dst), time.Second, synAckFrom(dst, src))
		if err != nil && !isTimeout(err) {
			t.Fatal(err)
		}
		return err == nil
	}
	loop, gwPort := netip.MustParseAddrPort("127.0.0.1:7777"), netip.MustParseAddrPort("10.201.0.1:7778")

	// The raw-frame guest works: the gateway answers its ARP.
	gw := m.Pool().Gateway()
	if _, err := exchange(f, arpRequest(guestMAC, guestIP, gw), 3*time.Second, arpReplyFrom(gw, guestIP)); err != nil {
		t.Fatalf("no ARP reply from the gateway: the raw-frame guest does not work: %v", err)
	}
	if syn(loop) {
		t.Error("a guest reached a loopback-only service of the host")
	}
	if syn(gwPort) {
		t.Error("a guest reached a service of the host on the gateway address")
	}

	c, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Name: DefaultTable, Family: tableFamily}
	flush := func(chain string) {
		t.Helper()
		c.FlushChain(&nftables.Chain{Name: chain, Table: table})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// Either chain alone stops the loopback attack.
	flush(chainGuard)
	if syn(loop) {
		t.Error("without the guard chain, the input chain alone did not stop a guest reaching loopback")
	}
	// Without both, the attacks work: this test can see them.
	flush(chainInput)
	if !syn(loop) || !syn(gwPort) {
		t.Fatal("without the guard and input chains the host did not answer: the test cannot see the attacks")
	}

	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	if syn(loop) || syn(gwPort) {
		t.Error("after EnsureHost a guest still reaches services of the host")
	}
}
