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
