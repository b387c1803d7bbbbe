package network

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// banger's table is in the inet family: one table holds the NAT and filter
// chains for every hook, the forward guard also covers IPv6 (guests have
// IPv6 link-local addresses; nothing may be forwarded to them uninvited),
// and an IPv6 guest network would fit in the same table. Rules that read
// IPv4 header fields are guarded by `meta nfproto ipv4`, as nft(8) itself
// does in inet tables.
const tableFamily = nftables.TableFamilyINet

// Chain names in banger's table. publishChain is a regular chain that both
// DNAT base chains jump to, so one rule per published port serves traffic
// from outside (prerouting) and from the host itself (output); it is the only
// chain whose rules change while the daemon runs.
const (
	chainGuard       = "guard"
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
	chainForward     = "forward"
	chainInput       = "input"
	publishChain     = "publish"
)

// The bridge table (family bridge, same name as the inet table) holds the
// anti-spoofing rules: its prerouting chain sees each frame with the port
// it came in on, before the bridge learns its source MAC.
const (
	bridgeFamily        = nftables.TableFamilyBridge
	chainBridgeIngress  = "prerouting"
	bridgePriorityFirst = -200 // NF_BR_PRI_FILTER_BRIDGED: before br_netfilter (0)
)

// rulesetVersion is part of every static rule's comment: bump it when the
// static rules change, so EnsureHost rebuilds the chains of an older banger.
const rulesetVersion = 3

type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
	rules    []ruleSpec
}

// ruleSpec is a static rule: its comment says what it is for and names
// every parameter it depends on, so comparing comments compares rulesets.
type ruleSpec struct {
	comment string
	exprs   []expr.Any
}

var loopback = netip.MustParsePrefix("127.0.0.0/8")

// staticChains is banger's ruleset, less the published ports.
func staticChains(bridge string, pool netip.Prefix) []chainSpec {
	v := fmt.Sprintf("banger/v%d", rulesetVersion)
	// Guests do not reach published ports through the host: they are for
	// the outside world and the host itself. VMs reach each other directly
	// on a shared network. (Where br_netfilter is loaded, a DNAT back into
	// the bridge is switched at L2 between isolated ports, so it could not
	// work there anyway.)
	jumpPublish := ruleSpec{
		comment: fmt.Sprintf("%s: published ports, to a local address, but not from %s", v, bridge),
		exprs:   cat(nfprotoIPv4(), ifname(expr.MetaKeyIIFNAME, expr.CmpOpNeq, bridge), fibDaddrLocal(), verdict(expr.VerdictJump, publishChain)),
	}
	return []chainSpec{{
		// The bridge has route_localnet=1 so that published ports answer on
		// 127.0.0.1 (see postrouting). Without this guard a guest could
		// then reach the host's loopback-only services.
		name: chainGuard, typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPrerouting, priority: nftables.ChainPriorityRaw,
		rules: []ruleSpec{{
			comment: fmt.Sprintf("%s: drop loopback destinations arriving on %s", v, bridge),
			exprs:   cat(nfprotoIPv4(), ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), ipPrefix(ipDaddr, expr.CmpOpEq, loopback), verdict(expr.VerdictDrop, "")),
		}, {
			comment: fmt.Sprintf("%s: drop loopback sources arriving on %s", v, bridge),
			exprs:   cat(nfprotoIPv4(), ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), ipPrefix(ipSaddr, expr.CmpOpEq, loopback), verdict(expr.VerdictDrop, "")),
		}},
	}, {
		name: chainPrerouting, typ: nftables.ChainTypeNAT,
		hook: nftables.ChainHookPrerouting, priority: nftables.ChainPriorityNATDest,
		rules: []ruleSpec{jumpPublish},
	}, {
		name: chainOutput, typ: nftables.ChainTypeNAT,
		hook: nftables.ChainHookOutput, priority: nftables.ChainPriorityNATDest,
		rules: []ruleSpec{jumpPublish},
	}, {
		name: chainPostrouting, typ: nftables.ChainTypeNAT,
		hook: nftables.ChainHookPostrouting, priority: nftables.ChainPriorityNATSource,
		rules: []ruleSpec{{
			comment: fmt.Sprintf("%s: egress nat for %s leaving through anything but %s", v, pool, bridge),
			exprs:   cat(nfprotoIPv4(), ipPrefix(ipSaddr, expr.CmpOpEq, pool), ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, bridge), masq()),
		}, {
			comment: fmt.Sprintf("%s: published ports reached from the host's loopback, out %s", v, bridge),
			exprs:   cat(nfprotoIPv4(), ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), ipPrefix(ipSaddr, expr.CmpOpEq, loopback), masq()),
		}},
	}, {
		// Default deny towards the host: a guest reaches none of the
		// host's own addresses, published ports included. banger serves nothing to guests (no
		// DHCP, DNS resolvers are written into the guest), so the only
		// exception is replies to connections the host opened (ssh).
		name: chainInput, typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookInput, priority: nftables.ChainPriorityFilter,
		rules: []ruleSpec{{
			comment: fmt.Sprintf("%s: replies to the host's connections, from %s", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept, "")),
		}, {
			comment: fmt.Sprintf("%s: nothing else from %s to the host", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), verdict(expr.VerdictDrop, "")),
		}},
	}, {
		// Policy accept: banger only speaks for traffic to and from its
		// bridge. Out of it, each guest's policy (the egress chain jumps
		// to its chain by source address, which the bridge table
		// guarantees); guests without one get nothing. Into it, replies
		// and published ports. Guest to guest traffic is routed here too:
		// bridge ports are isolated, the host answers ARP for every guest.
		name: chainForward, typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookForward, priority: nftables.ChainPriorityFilter,
		rules: []ruleSpec{{
			comment: fmt.Sprintf("%s: replies into %s", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept, "")),
		}, {
			// Replies to connections made into the bridge (published
			// ports from outside, a peer on a shared network): they
			// passed the rules going in; the guest's egress policy is
			// for what it starts.
			comment: fmt.Sprintf("%s: replies out of %s", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), ctState(expr.CtStateBitESTABLISHED), verdict(expr.VerdictAccept, "")),
		}, {
			comment: fmt.Sprintf("%s: guests out of %s, by their policy", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), verdict(expr.VerdictJump, egressChain)),
		}, {
			comment: fmt.Sprintf("%s: guests with no policy out of %s", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), verdict(expr.VerdictDrop, "")),
		}, {
			comment: fmt.Sprintf("%s: published ports into %s", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), ctStatusDNAT(), verdict(expr.VerdictAccept, "")),
		}, {
			comment: fmt.Sprintf("%s: nothing else into %s", v, bridge),
			exprs:   cat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), verdict(expr.VerdictDrop, "")),
		}},
	}}
}

// bridgeChains is the static part of the bridge table: every frame a port
// of banger's bridge receives goes to its VM's chain (ports jumps by tap);
// a port with no VM gets nothing through.
//
// The ports are told by their interface group (see portGroup): the bridge
// family's `meta ibrname` is not built into every kernel.
func bridgeChains(bridge string) []chainSpec {
	v := fmt.Sprintf("banger/v%d", rulesetVersion)
	g := portGroup(bridge)
	return []chainSpec{{
		name: chainBridgeIngress, typ: nftables.ChainTypeFilter,
		hook: nftables.ChainHookPrerouting, priority: nftables.ChainPriorityRef(bridgePriorityFirst),
		rules: []ruleSpec{{
			comment: fmt.Sprintf("%s: frames from the ports of %s (group %d), by tap", v, bridge, g),
			exprs:   cat(iifGroup(g), verdict(expr.VerdictJump, portsChain)),
		}, {
			comment: fmt.Sprintf("%s: ports of %s (group %d) with no vm", v, bridge, g),
			exprs:   cat(iifGroup(g), verdict(expr.VerdictDrop, "")),
		}},
	}}
}

func (s chainSpec) comments() []string {
	out := make([]string, len(s.rules))
	for i, r := range s.rules {
		out[i] = r.comment
	}
	return out
}

// matches reports whether an existing chain is this base chain.
func (s chainSpec) matches(c *nftables.Chain) bool {
	return c.Type == s.typ &&
		c.Hooknum != nil && *c.Hooknum == *s.hook &&
		c.Priority != nil && *c.Priority == *s.priority &&
		c.Policy != nil && *c.Policy == nftables.ChainPolicyAccept
}

func (s chainSpec) chain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: s.name, Table: t, Type: s.typ, Hooknum: s.hook, Priority: s.priority, Policy: &accept}
}

func comment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

func withComment(s string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, s)
}

func ruleComments(rules []*nftables.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = comment(r)
	}
	return out
}

// Expression builders. Every match loads into register 1; the DNAT port
// goes to register 2.

func cat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

func nfprotoIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// Offsets of the IPv4 source and destination addresses.
const (
	ipSaddr = 12
	ipDaddr = 16
)

func ipPrefix(offset uint32, op expr.CmpOp, p netip.Prefix) []expr.Any {
	mask := make([]byte, 4)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	addr := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: addr[:]},
	}
}

func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ctStatusDNAT matches connections whose destination was translated: the
// ones a published port created.
func ctStatusDNAT() []expr.Any {
	const ipsDstNAT = 1 << 5 // IPS_DST_NAT in linux/netfilter/nf_conntrack_common.h
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func fibDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// portGroup is the interface group (IFLA_GROUP) of the guest ports of
// bridge: a number of its own per bridge name, so two Managers in one
// namespace tell their ports apart, and never 0 (the default group).
func portGroup(bridge string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("banger bridge " + bridge))
	return h.Sum32()&0x7fffffff | 0x10000
}

func iifGroup(g uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFGROUP, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(g)},
	}
}

func masq() []expr.Any { return []expr.Any{&expr.Masq{}} }

func verdict(kind expr.VerdictKind, chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: kind, Chain: chain}}
}

// dnatRule is one published port: l4proto and destination port, then DNAT
// to the guest's address and port.
func dnatRule(p Publish, guest netip.Addr) []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if p.Proto == ProtoUDP {
		proto = unix.IPPROTO_UDP
	}
	ip := guest.As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.HostPort)},
		&expr.Immediate{Register: 1, Data: ip[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(p.GuestPort)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}
