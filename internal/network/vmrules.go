package network

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/netpolicy"
)

// VMNet is what ApplyVM needs of a VM: who it is, its tap and the address
// and MAC it was given, and its policy.
type VMNet struct {
	Owner  string // the VM's ID: names its chains, tags its rules
	Tap    string // its tap, a port of the bridge
	IP     netip.Addr
	MAC    net.HardwareAddr
	Policy netpolicy.Policy
}

// Names in banger's tables for per-VM state.
const (
	// vmChainPrefix + owner is a VM's chain, in both tables.
	vmChainPrefix = "vm-"
	// netSetPrefix + name is the set (inet table) of the addresses of
	// the VMs in a named network.
	netSetPrefix = "net-"
	// portsChain (bridge table) jumps from each VM's tap to its chain.
	portsChain = "ports"
	// egressChain (inet table) jumps from each VM's address to its chain.
	egressChain = "egress"
)

func vmChain(owner string) string { return vmChainPrefix + owner }
func netSet(name string) string   { return netSetPrefix + name }

// vmRules is one VM's rules in banger's two tables, as data.
type vmRules struct {
	// portJump, in the bridge table's ports chain, sends the frames of the
	// VM's tap to bridge: its anti-spoofing chain.
	portJump ruleSpec
	bridge   []ruleSpec
	// egressJump, in the inet table's egress chain, sends the packets the
	// VM's address sends through the host to inet: its policy chain.
	egressJump ruleSpec
	inet       []ruleSpec
	networks   []string
}

// A jump rule's comment: "vm OWNER TAP" or "vm OWNER IP": what RemoveVM
// and VMs read back after a restart.
func jumpComment(owner, what string) string { return "vm " + owner + " " + what }

func parseJumpComment(c string) (owner, what string, ok bool) {
	f := strings.Fields(c)
	if len(f) != 3 || f[0] != "vm" {
		return "", "", false
	}
	return f[1], f[2], true
}

// buildVMRules is the exact ruleset of v on bridge, with the guests'
// resolvers dns. v is validated.
func buildVMRules(bridge string, dns []netip.Addr, v VMNet) vmRules {
	p := v.Policy.Normalize()
	chain := vmChain(v.Owner)
	r := vmRules{networks: p.Networks}

	// Bridge table: frames from the tap carry the VM's MAC, and its
	// address in IPv4 and ARP; nothing else (no IPv6, no VLAN tags, no
	// other ethertype) goes through. Dropped before the bridge learns the
	// source MAC, so a spoofed frame cannot steal another port's MAC.
	r.portJump = ruleSpec{
		comment: jumpComment(v.Owner, v.Tap),
		exprs:   cat(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, v.Tap), verdict(expr.VerdictJump, chain)),
	}
	ip := v.IP.As4()
	r.bridge = []ruleSpec{{
		comment: "source mac is not " + v.MAC.String(),
		exprs:   cat(etherSaddr(expr.CmpOpNeq, v.MAC), verdict(expr.VerdictDrop, "")),
	}, {
		comment: "arp sender mac is not " + v.MAC.String(),
		exprs:   cat(etherType(unix.ETH_P_ARP), arpIPv4(), arpSenderMAC(expr.CmpOpNeq, v.MAC), verdict(expr.VerdictDrop, "")),
	}, {
		comment: "arp from " + v.IP.String(),
		exprs:   cat(etherType(unix.ETH_P_ARP), arpIPv4(), arpSenderIP(ip), verdict(expr.VerdictAccept, "")),
	}, {
		comment: "arp probe (sender 0.0.0.0)",
		exprs:   cat(etherType(unix.ETH_P_ARP), arpIPv4(), arpSenderIP([4]byte{}), verdict(expr.VerdictAccept, "")),
	}, {
		comment: "ipv4 from " + v.IP.String(),
		exprs:   cat(etherType(unix.ETH_P_IP), bridgeIPSaddr(ip), verdict(expr.VerdictAccept, "")),
	}, {
		comment: "anything else",
		exprs:   verdict(expr.VerdictDrop, ""),
	}}

	// Inet table: the VM's routed traffic (the host's own addresses are
	// refused in the input chain before any of this).
	r.egressJump = ruleSpec{
		comment: jumpComment(v.Owner, v.IP.String()),
		exprs:   cat(nfprotoIPv4(), ipPrefix(ipSaddr, expr.CmpOpEq, netip.PrefixFrom(v.IP, 32)), verdict(expr.VerdictJump, chain)),
	}
	for _, n := range p.Networks {
		r.inet = append(r.inet, ruleSpec{
			comment: "guests of network " + n,
			exprs:   cat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), ipDaddrInSet(netSet(n)), verdict(expr.VerdictAccept, "")),
		})
	}
	r.inet = append(r.inet, ruleSpec{
		comment: "no other guest",
		exprs:   cat(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), verdict(expr.VerdictDrop, "")),
	})
	for _, d := range p.Deny {
		r.inet = append(r.inet, policyRules("deny "+d.String(), d, expr.VerdictDrop)...)
	}
	for _, a := range p.Allow {
		r.inet = append(r.inet, policyRules("allow "+a.String(), a, expr.VerdictAccept)...)
	}
	if p.Egress == netpolicy.EgressInternet {
		for _, a := range dns {
			dnsRule := netpolicy.Rule{Net: netip.PrefixFrom(a.Unmap(), 32), FromPort: 53, ToPort: 53}
			r.inet = append(r.inet, policyRules("guest dns "+a.Unmap().String(), dnsRule, expr.VerdictAccept)...)
		}
		for _, n := range netpolicy.ReservedRanges {
			r.inet = append(r.inet, ruleSpec{
				comment: "internet: not " + n.String(),
				exprs:   cat(ipPrefix(ipDaddr, expr.CmpOpEq, n), verdict(expr.VerdictDrop, "")),
			})
		}
		r.inet = append(r.inet, ruleSpec{comment: "internet", exprs: verdict(expr.VerdictAccept, "")})
	} else {
		r.inet = append(r.inet, ruleSpec{comment: "egress none", exprs: verdict(expr.VerdictDrop, "")})
	}
	return r
}

// policyRules: one nftables rule per protocol of r.
func policyRules(what string, r netpolicy.Rule, v expr.VerdictKind) []ruleSpec {
	protos := r.Protos()
	if protos == nil {
		return []ruleSpec{{comment: what, exprs: cat(ipPrefix(ipDaddr, expr.CmpOpEq, r.Net), verdict(v, ""))}}
	}
	out := make([]ruleSpec, len(protos))
	for i, proto := range protos {
		out[i] = ruleSpec{
			comment: fmt.Sprintf("%s (%s)", what, proto),
			exprs:   cat(ipPrefix(ipDaddr, expr.CmpOpEq, r.Net), l4proto(proto), dportRange(r.FromPort, r.ToPort), verdict(v, "")),
		}
	}
	return out
}

// Expression builders for the bridge family (link-layer and network
// header payloads) and for the policy chains.

func etherSaddr(op expr.CmpOp, mac net.HardwareAddr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(mac)},
	}
}

func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

// arpIPv4: the ARP header is Ethernet/IPv4 (htype 1, ptype 0x0800, hlen
// 6, plen 4), so the sender fields are where the next matches read them.
func arpIPv4() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1, 8, 0, 6, 4}},
	}
}

func arpSenderMAC(op expr.CmpOp, mac net.HardwareAddr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(mac)},
	}
}

func arpSenderIP(ip [4]byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
	}
}

func bridgeIPSaddr(ip [4]byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipSaddr, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
	}
}

func ipDaddrInSet(set string) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipDaddr, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set},
	}
}

func l4proto(proto string) []expr.Any {
	p := byte(unix.IPPROTO_TCP)
	if proto == ProtoUDP {
		p = unix.IPPROTO_UDP
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func dportRange(from, to uint16) []expr.Any {
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	if from == to {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(from)}}
	}
	return []expr.Any{
		load,
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(from)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(to)},
	}
}
