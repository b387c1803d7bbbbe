package network

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

func TestTaps(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.m
	const name = "tap-fc-0123abcd"

	if err := m.CreateTap(ctx, name, 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("CreateTap without the bridge = %v, want failed precondition", err)
	}
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"eth0", "tap-fc-", "tap-fc-0123456789", "tap-fc-a/b", ""} {
		if err := m.CreateTap(ctx, bad, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("CreateTap(%q) = %v, want invalid argument", bad, err)
		}
		if err := m.DeleteTap(ctx, bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("DeleteTap(%q) = %v, want invalid argument", bad, err)
		}
	}

	if err := m.CreateTap(ctx, name, 0); err != nil {
		t.Fatal(err)
	}
	br, err := e.nl.LinkByName(DefaultBridge)
	if err != nil {
		t.Fatal(err)
	}
	tap := linkOf(t, e, name)
	tt, ok := tap.(*netlink.Tuntap)
	switch {
	case !ok || tt.Mode != netlink.TUNTAP_MODE_TAP:
		t.Fatalf("%s is a %T %+v, want a tap", name, tap, tap)
	case tt.NonPersist:
		t.Error("tap is not persistent")
	case tt.Owner != 0:
		t.Errorf("tap owner = %d, want root", tt.Owner)
	case tt.Flags&netlink.TUNTAP_VNET_HDR == 0 || tt.Flags&netlink.TUNTAP_NO_PI == 0:
		t.Errorf("tap flags = %v, want vnet_hdr and no_pi", tt.Flags)
	case tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0:
		t.Error("tap is multi-queue; VMMs open one queue")
	case tap.Attrs().MasterIndex != br.Attrs().Index:
		t.Errorf("tap master = %d, want the bridge (%d)", tap.Attrs().MasterIndex, br.Attrs().Index)
	case tap.Attrs().Flags&net.FlagUp == 0:
		t.Error("tap is not up")
	case tap.Attrs().Alias != tapAliasPrefix+DefaultBridge:
		t.Errorf("tap alias = %q, want %q", tap.Attrs().Alias, tapAliasPrefix+DefaultBridge)
	}
	if pi, err := e.nl.LinkGetProtinfo(tap); err != nil || !pi.Isolated {
		t.Errorf("tap's bridge port: isolated %v, %v; want isolated (see Manager.attach)", pi.Isolated, err)
	}
	if g := tap.Attrs().Group; g != portGroup(DefaultBridge) {
		t.Errorf("tap's group = %d, want the bridge's port group %d", g, portGroup(DefaultBridge))
	}
	// A jailed Firecracker runs as its own user: its tap is handed to that uid.
	jailed := "tap-fc-jail0001"
	if err := m.CreateTap(ctx, jailed, 100003); err != nil {
		t.Fatal(err)
	}
	if jt, ok := linkOf(t, e, jailed).(*netlink.Tuntap); !ok || jt.Owner != 100003 {
		t.Errorf("jailed tap owner = %+v, want uid 100003", jt)
	}
	if err := m.DeleteTap(ctx, jailed); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "tap-fc-jail0002", -1); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("negative owner: %v", err)
	}
	// Reused when it is one of ours (a retried start).
	if err := m.CreateTap(ctx, name, 0); err != nil {
		t.Fatalf("CreateTap of an existing banger tap: %v", err)
	}
	if again := linkOf(t, e, name); again.Attrs().Index != tap.Attrs().Index {
		t.Error("CreateTap replaced an existing banger tap")
	}

	// A VMM opens it by name: the carrier comes up, and frames written by
	// "the guest" reach the gateway on the bridge, which answers.
	if linkOf(t, e, name).Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
		t.Error("tap has a carrier before anyone opened it")
	}
	f := openTap(t, e.host, name)
	waitFor(t, "the tap's carrier", func() bool { return linkOf(t, e, name).Attrs().RawFlags&unix.IFF_LOWER_UP != 0 })
	guestMAC := net.HardwareAddr{0x06, 0xfc, 0, 0, 0, 9}
	guestIP, gw := netip.MustParseAddr("10.201.0.9"), m.Pool().Gateway()
	// Until ApplyVM gives the tap its VM's rules, nothing gets through.
	if _, err := exchange(f, arpRequest(guestMAC, guestIP, gw), time.Second, arpReplyFrom(gw, guestIP)); !isTimeout(err) {
		t.Errorf("ARP through a tap with no vm rules: %v, want no reply", err)
	}
	if err := m.ApplyVM(ctx, VMNet{Owner: "vm9", Tap: name, IP: guestIP, MAC: guestMAC}); err != nil {
		t.Fatal(err)
	}
	// Nor with another VM's address.
	other := netip.MustParseAddr("10.201.0.8")
	if _, err := exchange(f, arpRequest(guestMAC, other, gw), time.Second, arpReplyFrom(gw, other)); !isTimeout(err) {
		t.Errorf("ARP with another address through the tap: %v, want no reply", err)
	}
	reply, err := exchange(f, arpRequest(guestMAC, guestIP, gw), 3*time.Second, arpReplyFrom(gw, guestIP))
	if err != nil {
		t.Fatalf("no ARP reply from the gateway through the tap: %v", err)
	}
	if got := net.HardwareAddr(reply[22:28]); got.String() != br.Attrs().HardwareAddr.String() {
		t.Errorf("gateway answered with MAC %s, want the bridge's %s", got, br.Attrs().HardwareAddr)
	}
	f.Close()
	if _, err := e.nl.LinkByName(name); err != nil {
		t.Errorf("tap gone after the VMM closed it (not persistent?): %v", err)
	}

	// Links of a banger tap's name that are not banger taps are refused,
	// never taken over or deleted.
	if err := e.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tap-fc-veth001"}, PeerName: "vt-peer"}); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "tap-fc-veth001", 0); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateTap over a veth = %v, want already exists", err)
	}
	if err := m.DeleteTap(ctx, "tap-fc-veth001"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("DeleteTap of a veth = %v, want failed precondition", err)
	}
	// Taps on no bridge: without a label, or labelled with another
	// bridge, they may be another daemon's.
	looseTap(t, e, m, "tap-fc-loose001", "")
	looseTap(t, e, m, "tap-fc-loose002", tapAliasPrefix+"other0")
	for _, n := range []string{"tap-fc-loose001", "tap-fc-loose002"} {
		if err := m.CreateTap(ctx, n, 0); !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Errorf("CreateTap over %s = %v, want already exists", n, err)
		}
	}
	if err := m.DeleteTap(ctx, "tap-fc-loose002"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("DeleteTap of a tap labelled with another bridge = %v, want failed precondition", err)
	}
	for _, n := range []string{"tap-fc-veth001", "tap-fc-loose001", "tap-fc-loose002"} {
		if _, err := e.nl.LinkByName(n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	// Labelled with this bridge, it is ours, left by a crash between
	// creation and attachment: reused.
	if err := m.createTap("tap-fc-loose003", 0); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, "tap-fc-loose003", 0); err != nil {
		t.Errorf("CreateTap over our own unattached tap: %v", err)
	}
	if l := linkOf(t, e, "tap-fc-loose003"); l.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("our unattached tap was not attached: master %d", l.Attrs().MasterIndex)
	}

	if err := m.DeleteTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := e.nl.LinkByName(name); !isNotFound(err) {
		t.Errorf("tap still there after DeleteTap: %v", err)
	}
	if err := m.DeleteTap(ctx, name); err != nil {
		t.Errorf("DeleteTap of a missing tap: %v", err)
	}
}

func TestRemoveOrphanTaps(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.m
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tap-fc-00000001", "tap-fc-00000002"} {
		if err := m.CreateTap(ctx, n, 0); err != nil {
			t.Fatal(err)
		}
	}
	// An orphan that is on no bridge (say the bridge was recreated) but
	// labelled with ours; links that are not banger taps: a veth with the
	// prefix, a tap without it; and a tap on no bridge and unlabelled,
	// which could be another daemon's.
	for _, n := range []string{"tap-fc-00000003", "tap-other"} {
		if err := m.createTap(n, 0); err != nil {
			t.Fatal(err)
		}
	}
	looseTap(t, e, m, "tap-fc-00000004", "")
	if err := e.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tap-fc-veth001"}, PeerName: "vt-peer"}); err != nil {
		t.Fatal(err)
	}
	owned := func(name string) bool { return name == "tap-fc-00000001" }

	orphans, err := m.OrphanTaps(ctx, owned)
	if err != nil || !slices.Equal(orphans, []string{"tap-fc-00000002", "tap-fc-00000003"}) {
		t.Fatalf("OrphanTaps = %v, %v", orphans, err)
	}
	if _, err := e.nl.LinkByName("tap-fc-00000002"); err != nil {
		t.Fatal("OrphanTaps removed something")
	}
	removed, err := m.RemoveOrphanTaps(ctx, owned)
	if err != nil || !slices.Equal(removed, []string{"tap-fc-00000002", "tap-fc-00000003"}) {
		t.Fatalf("RemoveOrphanTaps = %v, %v", removed, err)
	}
	for _, n := range []string{"tap-fc-00000002", "tap-fc-00000003"} {
		if _, err := e.nl.LinkByName(n); !isNotFound(err) {
			t.Errorf("orphan %s still there: %v", n, err)
		}
	}
	for _, n := range []string{"tap-fc-00000001", "tap-other", "tap-fc-veth001", "tap-fc-00000004", DefaultBridge, "lo"} {
		if _, err := e.nl.LinkByName(n); err != nil {
			t.Errorf("%s was removed: %v", n, err)
		}
	}
	if removed, err := m.RemoveOrphanTaps(ctx, owned); err != nil || len(removed) != 0 {
		t.Errorf("second RemoveOrphanTaps = %v, %v", removed, err)
	}
}

// looseTap creates a tap on no bridge with the given alias ("": none).
func looseTap(t *testing.T, e *env, m *Manager, name, alias string) {
	t.Helper()
	if err := m.createTap(name, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.nl.LinkSetAlias(linkOf(t, e, name), alias); err != nil {
		t.Fatal(err)
	}
	if got := linkOf(t, e, name).Attrs().Alias; got != alias {
		t.Fatalf("%s: alias %q, want %q", name, got, alias)
	}
}

func linkOf(t *testing.T, e *env, name string) netlink.Link {
	t.Helper()
	l, err := e.nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(3 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
