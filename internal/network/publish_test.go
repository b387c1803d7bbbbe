package network

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/banger-vm/banger/errdefs"
)

func TestParsePublish(t *testing.T) {
	good := []struct {
		in   string
		want Publish
	}{
		{"8080:80", Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoTCP}},
		{"8080:80/tcp", Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoTCP}},
		{"5353:53/udp", Publish{HostPort: 5353, GuestPort: 53, Proto: ProtoUDP}},
		{"1:65535/UDP", Publish{HostPort: 1, GuestPort: 65535, Proto: ProtoUDP}},
		{"080:8", Publish{HostPort: 80, GuestPort: 8, Proto: ProtoTCP}},
	}
	for _, c := range good {
		got, err := ParsePublish(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParsePublish(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	if s := (Publish{HostPort: 5353, GuestPort: 53, Proto: ProtoUDP}).String(); s != "5353:53/udp" {
		t.Errorf("String() = %q", s)
	}

	bad := []struct {
		in, says string // says: what the message must name
	}{
		{"", `no ":"`},
		{"80", `no ":"`},
		{":80", "host port is empty"},
		{"80:", "guest port is empty"},
		{"a:b", `host port "a" is not a number`},
		{"80:b", `guest port "b" is not a number`},
		{"+80:80", `host port "+80" is not a number`},
		{"-1:80", `host port "-1" is not a number`},
		{"0:80", "host port 0 is out of range 1-65535"},
		{"80:0", "guest port 0 is out of range 1-65535"},
		{"70000:80", "host port 70000 is out of range 1-65535"},
		{"99999999999999999999:80", "out of range"},
		{"80:80/sctp", `protocol "sctp" is not supported: use tcp or udp`},
		{"80:80/", `no protocol after "/"`},
		{"80:80/tcp/udp", `protocol "tcp/udp" is not supported`},
		{"127.0.0.1:80:80", `more than one ":"`},
		{" 80:80", "is not a number"},
	}
	for _, c := range bad {
		_, err := ParsePublish(c.in)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParsePublish(%q) = %v, want invalid argument", c.in, err)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.says) || !strings.Contains(msg, "e.g. 8080:80") || !strings.Contains(msg, `"`+c.in+`"`) {
			t.Errorf("ParsePublish(%q) error %q should quote the input, say %q and give an example", c.in, msg, c.says)
		}
	}
}

func TestPublishCommentRoundTrip(t *testing.T) {
	p := Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoUDP}
	ip := netip.MustParseAddr("10.1.2.3")
	c := publishComment("0123abcd", ip, p)
	got, ok := parsePublishComment(c)
	if !ok || got != (Published{Publish: p, Owner: "0123abcd", GuestIP: ip}) {
		t.Fatalf("round trip of %q = %+v, %v", c, got, ok)
	}
	for _, foreign := range []string{"", "banger/v1: guests out of banger0", "vm a b -> c", "vm a 80/tcp -> 10.0.0.1"} {
		if _, ok := parsePublishComment(foreign); ok {
			t.Errorf("parsed %q as a published port", foreign)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	good, err := NewPool(testCIDR)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  Config
		says string
	}{
		{"no pool", Config{}, "no guest network"},
		{"a /31 pool", Config{Pool: Pool{prefix: netip.MustParsePrefix("10.0.0.0/31")}}, "no room for guests"},
		{"a /32 pool", Config{Pool: Pool{prefix: netip.MustParsePrefix("10.0.0.1/32")}}, "no room for guests"},
		{"an IPv6 pool", Config{Pool: Pool{prefix: netip.MustParsePrefix("fd00::/64")}}, "no room for guests"},
		{"a long bridge name", Config{Pool: good, Bridge: "a-bridge-name-too-long"}, "bridge name"},
		{"a bridge name with a slash", Config{Pool: good, Bridge: "br/0"}, "bridge name"},
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	cases = append(cases, struct {
		name string
		cfg  Config
		says string
	}{"a handle that is no network namespace", Config{Pool: good, NetNS: netns.NsHandle(devNull.Fd())}, "not a network namespace"})
	for _, c := range cases {
		m, err := New(c.cfg)
		if err == nil {
			m.Close()
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: New = %v, want invalid argument saying %q", c.name, err, c.says)
		}
	}
	// The pool's own check (what the daemon's --guest-cidr goes through).
	for _, cidr := range []string{"10.0.0.0/31", "10.0.0.1/32", "10.0.0.0/30"} {
		if _, err := NewPool(cidr); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "no room for guests") {
			t.Errorf("NewPool(%q) = %v, want invalid argument, no room for guests", cidr, err)
		}
	}
}

func TestPublishConflictsAndTeardown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.m
	g1, g2 := netip.MustParseAddr("10.201.0.2"), netip.MustParseAddr("10.201.0.3")
	web := Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoTCP}

	// No host network yet: a clear precondition, nothing created.
	if err := m.Publish(ctx, "vm1", g1, web); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Publish before EnsureHost = %v, want failed precondition", err)
	}
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}

	if err := m.Publish(ctx, "vm1", g1, web); err != nil {
		t.Fatal(err)
	}
	// The same mapping again for the same VM is a no-op (a retried start).
	if err := m.Publish(ctx, "vm1", g1, web); err != nil {
		t.Fatalf("republishing the same mapping: %v", err)
	}
	for _, c := range []struct {
		owner string
		ip    netip.Addr
		p     Publish
	}{
		{"vm2", g2, Publish{HostPort: 8080, GuestPort: 81, Proto: ProtoTCP}}, // another VM
		{"vm2", g2, web}, // another VM, same guest port
		{"vm1", g1, Publish{HostPort: 8080, GuestPort: 81, Proto: ProtoTCP}}, // same VM, other guest port
	} {
		err := m.Publish(ctx, c.owner, c.ip, c.p)
		if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "host port 8080/tcp") || !strings.Contains(err.Error(), `"vm1"`) {
			t.Errorf("Publish(%s, %s) = %v, want a conflict naming 8080/tcp and vm1", c.owner, c.p, err)
		}
	}
	// Another protocol on the same port is another port.
	if err := m.Publish(ctx, "vm2", g2, Publish{HostPort: 8080, GuestPort: 53, Proto: ProtoUDP}); err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(ctx, "vm2", g2, Publish{HostPort: 9090, GuestPort: 90, Proto: ProtoTCP}); err != nil {
		t.Fatal(err)
	}

	// A port a host process listens on is not taken over.
	var ln net.Listener
	if err := inNetNS(e.host, func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:7070"); return err }); err != nil {
		t.Fatal(err)
	}
	err := m.Publish(ctx, "vm2", g2, Publish{HostPort: 7070, GuestPort: 70, Proto: ProtoTCP})
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "7070/tcp is in use by a process on the host") {
		t.Errorf("Publish over a host listener = %v, want conflict", err)
	}
	ln.Close()

	// Bad input.
	for _, c := range []struct {
		owner string
		ip    netip.Addr
		p     Publish
	}{
		{"vm3", netip.MustParseAddr("10.9.9.9"), Publish{HostPort: 1, GuestPort: 1, Proto: ProtoTCP}},     // outside the pool
		{"vm3", netip.MustParseAddr("10.201.0.1"), Publish{HostPort: 1, GuestPort: 1, Proto: ProtoTCP}},   // the gateway
		{"vm3", netip.MustParseAddr("10.201.0.255"), Publish{HostPort: 1, GuestPort: 1, Proto: ProtoTCP}}, // broadcast
		{"vm 3", g1, Publish{HostPort: 1, GuestPort: 1, Proto: ProtoTCP}},                                 // owner
		{"", g1, Publish{HostPort: 1, GuestPort: 1, Proto: ProtoTCP}},
		{"vm3", g1, Publish{HostPort: 0, GuestPort: 1, Proto: ProtoTCP}},
		{"vm3", g1, Publish{HostPort: 1, GuestPort: 1, Proto: "sctp"}},
	} {
		if err := m.Publish(ctx, c.owner, c.ip, c.p); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Publish(%q, %s, %+v) = %v, want invalid argument", c.owner, c.ip, c.p, err)
		}
	}

	want := []Published{
		{Publish: web, Owner: "vm1", GuestIP: g1},
		{Publish: Publish{HostPort: 9090, GuestPort: 90, Proto: ProtoTCP}, Owner: "vm2", GuestIP: g2},
		{Publish: Publish{HostPort: 8080, GuestPort: 53, Proto: ProtoUDP}, Owner: "vm2", GuestIP: g2},
	}
	checkPublished(t, m, want)

	// Published ports survive EnsureHost (a daemon restart with running VMs).
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	checkPublished(t, m, want)

	// Unpublish removes exactly that VM's rules, and is idempotent.
	if err := m.Unpublish(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	checkPublished(t, m, want[1:])
	if err := m.Unpublish(ctx, "vm1"); err != nil {
		t.Fatalf("second Unpublish: %v", err)
	}
	if err := m.Unpublish(ctx, "nobody"); err != nil {
		t.Fatal(err)
	}
	checkPublished(t, m, want[1:])
	// The port is free again, for anyone.
	if err := m.Publish(ctx, "vm3", netip.MustParseAddr("10.201.0.4"), web); err != nil {
		t.Fatal(err)
	}

	// Teardown: no table, no bridge, no tap; then again, and everything
	// else is idempotent on a bare host.
	if err := m.CreateTap(ctx, "tap-fc-0000000a", 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown(ctx); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	if tableNames(t, m)[m.Table()] {
		t.Error("banger's table is still there after Teardown")
	}
	for _, name := range []string{m.Bridge(), "tap-fc-0000000a"} {
		if _, err := e.nl.LinkByName(name); !isNotFound(err) {
			t.Errorf("link %q after Teardown: %v", name, err)
		}
	}
	if got, err := m.Published(ctx); err != nil || len(got) != 0 {
		t.Errorf("Published after Teardown = %v, %v", got, err)
	}
	if err := m.Unpublish(ctx, "vm2"); err != nil {
		t.Errorf("Unpublish after Teardown: %v", err)
	}
	if err := m.DeleteTap(ctx, "tap-fc-0000000a"); err != nil {
		t.Errorf("DeleteTap after Teardown: %v", err)
	}
	if err := m.CreateTap(ctx, "tap-fc-0000000b", 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("CreateTap without a bridge = %v, want failed precondition", err)
	}
}

func checkPublished(t *testing.T, m *Manager, want []Published) {
	t.Helper()
	got, err := m.Published(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("Published = %+v, want %+v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("Published = %+v, want %+v", got, want)
		}
	}
}

func tableNames(t *testing.T, m *Manager) map[string]bool {
	t.Helper()
	c, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, tb := range tables {
		names[tb.Name] = true
	}
	return names
}
