package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
)

// ruleset renders banger's table as the nftables library reads it back:
// chains with their hook, priority and policy, rules with their handles
// (so a rule deleted and re-added shows), comments and expressions.
func ruleset(t *testing.T, m *Manager) string {
	t.Helper()
	c, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(tableFamily)
	if err != nil {
		t.Fatal(err)
	}
	chains = slices.DeleteFunc(chains, func(ch *nftables.Chain) bool { return ch.Table.Name != m.Table() })
	slices.SortFunc(chains, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	for _, ch := range chains {
		fmt.Fprintf(&b, "chain %s type=%q", ch.Name, ch.Type)
		if ch.Hooknum != nil {
			fmt.Fprintf(&b, " hook=%d priority=%d policy=%d", *ch.Hooknum, *ch.Priority, *ch.Policy)
		}
		b.WriteString("\n")
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			fmt.Fprintf(&b, "  handle %d %q:", r.Handle, comment(r))
			for _, x := range r.Exprs {
				fmt.Fprintf(&b, " %T%+v", x, x)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// nftList is `nft -j list table FAMILY NAME` run inside the test's host
// namespace: the kernel's view through nft's own eyes.
func nftList(t *testing.T, e *env, family, table string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", e.nsName("host"), "nft", "-j", "list", "table", family, table).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table %s %s: %v: %s", family, table, err, out)
	}
	return string(out)
}

func TestEnsureHostIsIdempotent(t *testing.T) {
	e := newEnv(t)
	testutil.RequireTools(t, "ip", "nft")
	ctx := context.Background()
	hostForward := readSysctl(t, mustHostNS(t), "ipv4/ip_forward")

	// Someone else's table in the same namespace: banger must not touch it.
	foreign := &nftables.Table{Name: "other", Family: nftables.TableFamilyINet}
	c, err := e.m.nft()
	if err != nil {
		t.Fatal(err)
	}
	c.AddTable(foreign)
	fch := c.AddChain(&nftables.Chain{Name: "input", Table: foreign, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: foreign, Chain: fch, Exprs: []expr.Any{&expr.Counter{}}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	foreignBefore := nftList(t, e, "inet", "other")

	if err := e.m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	first, firstNft := ruleset(t, e.m), nftList(t, e, "inet", DefaultTable)
	if err := e.m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	if second := ruleset(t, e.m); second != first {
		t.Errorf("second EnsureHost changed the ruleset:\n%s\nthen:\n%s", first, second)
	}
	if secondNft := nftList(t, e, "inet", DefaultTable); secondNft != firstNft {
		t.Errorf("second EnsureHost changed nft's view:\n%s\nthen:\n%s", firstNft, secondNft)
	}
	out, _ := exec.Command("ip", "netns", "exec", e.nsName("host"), "nft", "list", "table", "inet", DefaultTable).CombinedOutput()
	t.Logf("banger's table:\n%s", out)
	for _, want := range []string{
		`type nat hook prerouting priority dstnat; policy accept;`,
		`type nat hook output priority -100; policy accept;`,
		`type nat hook postrouting priority srcnat; policy accept;`,
		`type filter hook forward priority filter; policy accept;`,
		`type filter hook prerouting priority raw; policy accept;`,
		`ip saddr 10.201.0.0/24 oifname != "banger0" masquerade`,
		`fib daddr type local jump publish`,
		`oifname "banger0" ct state established,related accept`,
		`chain publish {`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("banger's table lacks %q", want)
		}
	}

	// The bridge: up, the gateway with the pool's prefix, a fixed MAC.
	br, err := e.nl.LinkByName(DefaultBridge)
	if err != nil {
		t.Fatal(err)
	}
	if br.Type() != "bridge" || br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("bridge: type %s flags %v", br.Type(), br.Attrs().Flags)
	}
	if mac := br.Attrs().HardwareAddr.String(); mac != "06:fb:0a:c9:00:01" {
		t.Errorf("bridge MAC = %s", mac)
	}
	addrs, err := e.nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.201.0.1/24" {
		t.Errorf("bridge addresses = %v, want just 10.201.0.1/24", addrs)
	}

	// Forwarding in the test's namespace, not in the host's own.
	if v := readSysctl(t, e.host, "ipv4/ip_forward"); v != "1" {
		t.Errorf("ip_forward in the namespace = %s", v)
	}
	if v := readSysctl(t, e.host, "ipv4/conf/banger0/route_localnet"); v != "1" {
		t.Errorf("route_localnet on the bridge = %s", v)
	}
	if v := readSysctl(t, mustHostNS(t), "ipv4/ip_forward"); v != hostForward {
		t.Errorf("the host's own ip_forward changed from %s to %s", hostForward, v)
	}

	// Teardown leaves the other table exactly as it was.
	if got := nftList(t, e, "inet", "other"); got != foreignBefore {
		t.Errorf("EnsureHost touched another table:\n%s\nthen:\n%s", foreignBefore, got)
	}
	if err := e.m.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := nftList(t, e, "inet", "other"); got != foreignBefore {
		t.Errorf("Teardown touched another table:\n%s\nthen:\n%s", foreignBefore, got)
	}
}

// A damaged table (a stray rule, a missing rule, an unknown chain, a chain
// with the wrong hook) and a bridge with a stale address are repaired, and
// published ports are kept.
func TestEnsureHostRepairs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Publish(ctx, "vm1", e.m.Pool().Gateway().Next(), Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	pristine := withoutHandles(ruleset(t, e.m))

	c, err := e.m.nft()
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: DefaultTable, Family: tableFamily}
	c.AddRule(&nftables.Rule{Table: tb, Chain: &nftables.Chain{Name: chainForward, Table: tb}, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
	c.FlushChain(&nftables.Chain{Name: chainPostrouting, Table: tb})
	c.AddChain(&nftables.Chain{Name: "stray", Table: tb})
	c.FlushChain(&nftables.Chain{Name: chainGuard, Table: tb})
	c.DelChain(&nftables.Chain{Name: chainGuard, Table: tb})
	c.AddChain(&nftables.Chain{Name: chainGuard, Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	br, err := e.nl.LinkByName(DefaultBridge)
	if err != nil {
		t.Fatal(err)
	}
	stale := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, 0, 1), Mask: net.CIDRMask(24, 32)}}
	if err := e.nl.AddrAdd(br, stale); err != nil {
		t.Fatal(err)
	}
	if err := e.nl.LinkSetDown(br); err != nil {
		t.Fatal(err)
	}

	if err := e.m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	if got := withoutHandles(ruleset(t, e.m)); got != pristine {
		t.Errorf("EnsureHost did not repair the table:\n%s\nwant:\n%s", got, pristine)
	}
	br, err = e.nl.LinkByName(DefaultBridge)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := e.nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if br.Attrs().Flags&net.FlagUp == 0 || len(addrs) != 1 || addrs[0].IPNet.String() != "10.201.0.1/24" {
		t.Errorf("bridge not repaired: flags %v addrs %v", br.Attrs().Flags, addrs)
	}

	// A link that is not a bridge under the bridge's name is refused.
	if err := e.m.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: DefaultBridge}, PeerName: "vt-peer"}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.EnsureHost(ctx); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("EnsureHost over a veth named %s = %v", DefaultBridge, err)
	}
	if err := e.m.Teardown(ctx); err == nil {
		t.Error("Teardown deleted a link that is not banger's bridge")
	}
	if _, err := e.nl.LinkByName(DefaultBridge); err != nil {
		t.Errorf("the veth is gone: %v", err)
	}
}

func withoutHandles(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, "  handle "); ok {
			_, after, _ := strings.Cut(rest, " ")
			lines[i] = "  " + after
		}
	}
	return strings.Join(lines, "\n")
}

// A guest network that overlaps a network the host reaches through another
// link is refused before anything is created.
func TestEnsureHostRefusesOverlap(t *testing.T) {
	e := newEnv(t)
	if err := e.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vt-lan"}, PeerName: "vt-lan-peer"}); err != nil {
		t.Fatal(err)
	}
	lan, err := e.nl.LinkByName("vt-lan")
	if err == nil {
		err = e.nl.AddrAdd(lan, nlAddr(netip.MustParsePrefix("10.201.0.77/16")))
	}
	if err == nil {
		err = e.nl.LinkSetUp(lan)
	}
	if err != nil {
		t.Fatal(err)
	}
	err = e.m.EnsureHost(context.Background())
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "overlaps 10.201.0.0/16") || !strings.Contains(err.Error(), `"vt-lan"`) {
		t.Fatalf("EnsureHost over the host's own network = %v, want failed precondition naming the route and link", err)
	}
	if _, err := e.nl.LinkByName(DefaultBridge); !isNotFound(err) {
		t.Errorf("the bridge was created anyway: %v", err)
	}
}

// Two daemons in one network namespace, each with its own bridge, table
// and guest network: neither one's orphan removal, EnsureHost, DeleteTap,
// Unpublish or Teardown touches what is the other's.
func TestTwoManagersInOneNamespace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.m
	pool, err := NewPool("10.202.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Bridge: "banger1", Table: "banger-b", Pool: pool, NetNS: e.host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Teardown(ctx); err != nil {
			t.Errorf("teardown the second manager: %v", err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("close the second manager: %v", err)
		}
	})
	for _, m := range []*Manager{a, b} {
		if err := m.EnsureHost(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Both publish a port for a VM of the same id: each table holds its own.
	webA := Publish{HostPort: 8080, GuestPort: 80, Proto: ProtoTCP}
	webB := Publish{HostPort: 8081, GuestPort: 80, Proto: ProtoTCP}
	gA, gB := netip.MustParseAddr("10.201.0.2"), netip.MustParseAddr("10.202.0.2")
	if err := a.Publish(ctx, "vm1", gA, webA); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, "vm1", gB, webB); err != nil {
		t.Fatal(err)
	}
	checkPublished(t, a, []Published{{Publish: webA, Owner: "vm1", GuestIP: gA}})
	checkPublished(t, b, []Published{{Publish: webB, Owner: "vm1", GuestIP: gB}})

	// Taps: each has one tap a VM owns, one orphan, and b one more orphan
	// on no bridge (labelled with b's bridge).
	for _, n := range []string{"tap-fc-a0000001", "tap-fc-a0000002"} {
		if err := a.CreateTap(ctx, n, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"tap-fc-b0000001", "tap-fc-b0000002"} {
		if err := b.CreateTap(ctx, n, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.createTap("tap-fc-b0000003", 0); err != nil {
		t.Fatal(err)
	}
	ownedA := func(n string) bool { return n == "tap-fc-a0000001" }
	ownedB := func(n string) bool { return n == "tap-fc-b0000001" }
	if got, err := a.OrphanTaps(ctx, ownedA); err != nil || !slices.Equal(got, []string{"tap-fc-a0000002"}) {
		t.Errorf("a.OrphanTaps = %v, %v; want only a's orphan", got, err)
	}
	if got, err := b.OrphanTaps(ctx, ownedB); err != nil || !slices.Equal(got, []string{"tap-fc-b0000002", "tap-fc-b0000003"}) {
		t.Errorf("b.OrphanTaps = %v, %v; want only b's orphans", got, err)
	}
	if got, err := a.RemoveOrphanTaps(ctx, ownedA); err != nil || !slices.Equal(got, []string{"tap-fc-a0000002"}) {
		t.Errorf("a.RemoveOrphanTaps = %v, %v", got, err)
	}
	for _, n := range []string{"tap-fc-b0000001", "tap-fc-b0000002", "tap-fc-b0000003"} {
		if _, err := e.nl.LinkByName(n); err != nil {
			t.Errorf("a's orphan removal removed b's %s: %v", n, err)
		}
	}
	if got, err := b.RemoveOrphanTaps(ctx, ownedB); err != nil || !slices.Equal(got, []string{"tap-fc-b0000002", "tap-fc-b0000003"}) {
		t.Errorf("b.RemoveOrphanTaps = %v, %v", got, err)
	}
	if _, err := e.nl.LinkByName("tap-fc-a0000001"); err != nil {
		t.Errorf("b's orphan removal removed a's tap: %v", err)
	}

	// One's tap, by name, is refused to the other.
	if err := a.DeleteTap(ctx, "tap-fc-b0000001"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), `"banger1"`) {
		t.Errorf("a.DeleteTap of b's tap = %v, want failed precondition naming b's bridge", err)
	}
	if err := a.CreateTap(ctx, "tap-fc-b0000001", 0); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("a.CreateTap over b's tap = %v, want already exists", err)
	}
	if l := linkOf(t, e, "tap-fc-b0000001"); l.Attrs().Alias != tapAliasPrefix+"banger1" {
		t.Errorf("b's tap was relabelled: %q", l.Attrs().Alias)
	}

	// a's EnsureHost has work to do (a stray chain in its table) and does
	// it in its table only: b's, stray chain included, stays as it is.
	c, err := a.nft()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Manager{a, b} {
		c.AddChain(&nftables.Chain{Name: "stray", Table: m.table})
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	rulesB := ruleset(t, b)
	if !strings.Contains(rulesB, "chain stray") {
		t.Fatalf("no stray chain in b's table:\n%s", rulesB)
	}
	if err := a.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ruleset(t, a), "chain stray") {
		t.Error("a's EnsureHost left the stray chain in a's table")
	}
	if got := ruleset(t, b); got != rulesB {
		t.Errorf("a's EnsureHost changed b's table:\n%s\nwas:\n%s", got, rulesB)
	}

	// a's Unpublish of its vm1 leaves b's vm1 alone.
	if err := a.Unpublish(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	checkPublished(t, a, nil)
	checkPublished(t, b, []Published{{Publish: webB, Owner: "vm1", GuestIP: gB}})
	rulesB = ruleset(t, b)

	// a's Teardown removes a's bridge, table and taps, and nothing of b's.
	if err := a.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	tables := tableNames(t, a)
	if tables[a.Table()] || !tables[b.Table()] {
		t.Errorf("tables after a's Teardown: %v; want b's only", tables)
	}
	for _, n := range []string{a.Bridge(), "tap-fc-a0000001"} {
		if _, err := e.nl.LinkByName(n); !isNotFound(err) {
			t.Errorf("a's %s after a's Teardown: %v", n, err)
		}
	}
	brB := linkOf(t, e, b.Bridge())
	if brB.Attrs().Flags&net.FlagUp == 0 {
		t.Error("b's bridge is down after a's Teardown")
	}
	if l := linkOf(t, e, "tap-fc-b0000001"); l.Attrs().MasterIndex != brB.Attrs().Index {
		t.Errorf("b's tap left b's bridge: master %d", l.Attrs().MasterIndex)
	}
	if got := ruleset(t, b); got != rulesB {
		t.Errorf("a's Teardown changed b's table:\n%s\nwas:\n%s", got, rulesB)
	}
	checkPublished(t, b, []Published{{Publish: webB, Owner: "vm1", GuestIP: gB}})
	if got := readSysctl(t, e.host, "ipv4/ip_forward"); got != "1" {
		t.Errorf("ip_forward = %q after a's Teardown, b still needs 1", got)
	}
	// b's own orphan removal still knows its tap.
	if got, err := b.OrphanTaps(ctx, func(string) bool { return false }); err != nil || !slices.Equal(got, []string{"tap-fc-b0000001"}) {
		t.Errorf("b.OrphanTaps after a's Teardown = %v, %v", got, err)
	}
}

// TestForgetNeighbour: the host's ARP entry for an address on the bridge
// goes (an address that changed hands is resolved again); forgetting one
// the host never had is no error.
func TestForgetNeighbour(t *testing.T) {
	e := newEnv(t)
	if err := e.m.EnsureHost(context.Background()); err != nil {
		t.Fatal(err)
	}
	br, err := e.nl.LinkByName(e.m.bridge)
	if err != nil {
		t.Fatal(err)
	}
	ip := e.m.pool.Gateway().Next()
	mac, _ := net.ParseMAC("06:fc:00:00:00:01")
	n := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE, IP: ip.AsSlice(), HardwareAddr: mac}
	if err := e.nl.NeighSet(n); err != nil {
		t.Fatal(err)
	}
	has := func() bool {
		ns, err := e.nl.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range ns {
			if x.IP.Equal(ip.AsSlice()) {
				return true
			}
		}
		return false
	}
	if !has() {
		t.Fatal("the test's neighbour entry is not there")
	}
	if err := e.m.ForgetNeighbour(ip); err != nil {
		t.Fatal(err)
	}
	if has() {
		t.Fatalf("the neighbour entry for %s is still there", ip)
	}
	if err := e.m.ForgetNeighbour(ip); err != nil {
		t.Fatalf("forgetting an absent entry: %v", err)
	}
}
