package network

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/netpolicy"
)

// themselves: what the tests below compare.
func render(rules []ruleSpec) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = renderExprs(r.exprs)
	}
	return out
}

func renderExprs(exprs []expr.Any) string {
	var words []string
	var load string // what register 1 holds
	var mask []byte
	for _, x := range exprs {
		switch x := x.(type) {
		case *expr.Meta:
			load, mask = map[expr.MetaKey]string{
				expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname", expr.MetaKeyNFPROTO: "nfproto",
				expr.MetaKeyL4PROTO: "l4proto", expr.MetaKeyIIFGROUP: "iifgroup",
			}[x.Key], nil
		case *expr.Payload:
			load, mask = fmt.Sprintf("payload(%d,%d,%d)", x.Base, x.Offset, x.Len), nil
			load = map[string]string{
				"payload(0,6,6)": "ether saddr", "payload(0,12,2)": "ether type",
				"payload(1,0,6)": "arp hdr", "payload(1,8,6)": "arp sha", "payload(1,14,4)": "arp spa",
				"payload(1,12,4)": "ip saddr", "payload(1,16,4)": "ip daddr", "payload(2,2,2)": "th dport",
			}[load]
		case *expr.Ct:
			load, mask = map[expr.CtKey]string{expr.CtKeySTATE: "ct state", expr.CtKeySTATUS: "ct status"}[x.Key], nil
		case *expr.Bitwise:
			mask = x.Mask
		case *expr.Lookup:
			words = append(words, load+" @"+x.SetName)
		case *expr.Cmp:
			if (load == "ct state" || load == "ct status") && x.Op == expr.CmpOpNeq {
				words = append(words, load+" "+ctBits(load, binary.NativeEndian.Uint32(mask)))
				continue
			}
			op := map[expr.CmpOp]string{expr.CmpOpEq: "", expr.CmpOpNeq: "!= ", expr.CmpOpGte: ">= ", expr.CmpOpLte: "<= "}[x.Op]
			words = append(words, load+" "+op+value(load, mask, x.Data))
		case *expr.Verdict:
			v := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictJump: "jump " + x.Chain}[x.Kind]
			words = append(words, v)
		case *expr.Masq:
			words = append(words, "masquerade")
		default:
			words = append(words, fmt.Sprintf("%T", x))
		}
	}
	return strings.Join(words, " ")
}

func value(load string, mask, b []byte) string {
	switch load {
	case "iifname", "oifname":
		return strings.TrimRight(string(b), "\x00")
	case "nfproto":
		return map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[b[0]]
	case "l4proto":
		return map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[b[0]]
	case "iifgroup":
		return fmt.Sprint(binary.NativeEndian.Uint32(b))
	case "ether saddr", "arp sha":
		return net.HardwareAddr(b).String()
	case "ether type", "th dport":
		return fmt.Sprintf("%#04x", binary.BigEndian.Uint16(b))
	case "arp spa", "ip saddr", "ip daddr":
		a, _ := netip.AddrFromSlice(b)
		if mask == nil {
			return a.String()
		}
		bits := 0
		for _, m := range mask {
			for ; m != 0; m <<= 1 {
				bits++
			}
		}
		return netip.PrefixFrom(a, bits).String()
	}
	return fmt.Sprintf("%x", b)
}

// ctBits names the bits a "ct state" or "ct status" match accepts.
func ctBits(load string, bits uint32) string {
	names := map[uint32]string{expr.CtStateBitESTABLISHED: "established", expr.CtStateBitRELATED: "related", expr.CtStateBitNEW: "new"}
	if load == "ct status" {
		names = map[uint32]string{1 << 5: "dnat"}
	}
	var out []string
	for b := uint32(1); b != 0; b <<= 1 {
		if bits&b != 0 {
			out = append(out, names[b])
		}
	}
	return strings.Join(out, ",")
}

var testVM = VMNet{
	Owner: "abc123",
	Tap:   "tap-fc-abc123",
	IP:    netip.MustParseAddr("10.201.0.7"),
	MAC:   net.HardwareAddr{0x06, 0xfc, 0x0a, 0xc9, 0, 7},
}

// The bridge chain is the same for every policy: the VM's MAC, its IP in
// ARP and IPv4, nothing else.
func TestVMRulesAntiSpoofing(t *testing.T) {
	r := buildVMRules("banger0", nil, testVM)
	if got, want := renderExprs(r.portJump.exprs), "iifname tap-fc-abc123 jump vm-abc123"; got != want {
		t.Errorf("port jump = %q, want %q", got, want)
	}
	want := []string{
		"ether saddr != 06:fc:0a:c9:00:07 drop",
		"ether type 0x0806 arp hdr 000108000604 arp sha != 06:fc:0a:c9:00:07 drop",
		"ether type 0x0806 arp hdr 000108000604 arp spa 10.201.0.7 accept",
		"ether type 0x0806 arp hdr 000108000604 arp spa 0.0.0.0 accept",
		"ether type 0x0800 ip saddr 10.201.0.7 accept",
		"drop",
	}
	expectRules(t, "bridge chain", render(r.bridge), want)
}

func TestVMRulesPolicies(t *testing.T) {
	reserved := make([]string, len(netpolicy.ReservedRanges))
	for i, p := range netpolicy.ReservedRanges {
		reserved[i] = "ip daddr " + p.String() + " drop"
	}
	const noGuest = "oifname banger0 drop"
	cases := []struct {
		name   string
		dns    []netip.Addr
		policy netpolicy.Policy
		want   []string
	}{{
		name:   "default: internet, isolated",
		policy: netpolicy.Policy{},
		want:   concat([]string{noGuest}, reserved, []string{"accept"}),
	}, {
		name:   "none",
		policy: netpolicy.Policy{Egress: netpolicy.EgressNone},
		want:   []string{noGuest, "drop"},
	}, {
		name:   "networks",
		policy: netpolicy.Policy{Egress: netpolicy.EgressNone, Networks: []string{"team", "ci"}},
		want: []string{
			"oifname banger0 ip daddr @net-ci accept",
			"oifname banger0 ip daddr @net-team accept",
			noGuest, "drop",
		},
	}, {
		name: "none with allow and deny",
		policy: netpolicy.Policy{Egress: netpolicy.EgressNone,
			Allow: []netpolicy.Rule{mustRule("192.168.1.0/24:53/udp"), mustRule("10.0.0.0/8:8000-9000"), mustRule("1.1.1.1")},
			Deny:  []netpolicy.Rule{mustRule("10.1.0.0/16:8443/tcp")}},
		want: []string{
			noGuest,
			"ip daddr 10.1.0.0/16 l4proto tcp th dport 0x20fb drop",
			"ip daddr 192.168.1.0/24 l4proto udp th dport 0x0035 accept",
			"ip daddr 10.0.0.0/8 l4proto tcp th dport >= 0x1f40 th dport <= 0x2328 accept",
			"ip daddr 10.0.0.0/8 l4proto udp th dport >= 0x1f40 th dport <= 0x2328 accept",
			"ip daddr 1.1.1.1/32 accept",
			"drop",
		},
	}, {
		name:   "internet with a deny",
		policy: netpolicy.Policy{Deny: []netpolicy.Rule{mustRule("8.8.8.8:53")}},
		want: concat([]string{noGuest,
			"ip daddr 8.8.8.8/32 l4proto tcp th dport 0x0035 drop",
			"ip daddr 8.8.8.8/32 l4proto udp th dport 0x0035 drop",
		}, reserved, []string{"accept"}),
	}, {
		name:   "internet with guest dns",
		dns:    []netip.Addr{netip.MustParseAddr("192.168.1.1")},
		policy: netpolicy.Policy{},
		want: concat([]string{noGuest,
			"ip daddr 192.168.1.1/32 l4proto tcp th dport 0x0035 accept",
			"ip daddr 192.168.1.1/32 l4proto udp th dport 0x0035 accept",
		}, reserved, []string{"accept"}),
	}, {
		name:   "none ignores guest dns",
		dns:    []netip.Addr{netip.MustParseAddr("192.168.1.1")},
		policy: netpolicy.Policy{Egress: netpolicy.EgressNone},
		want:   []string{noGuest, "drop"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, dns := testVM, c.dns
			v.Policy = c.policy
			r := buildVMRules("banger0", dns, v)
			if got, want := renderExprs(r.egressJump.exprs), "nfproto ipv4 ip saddr 10.201.0.7/32 jump vm-abc123"; got != want {
				t.Errorf("egress jump = %q, want %q", got, want)
			}
			expectRules(t, "inet chain", render(r.inet), c.want)
		})
	}
}

// The static chains: the host refuses everything from the bridge but
// replies; forward hands guests to their policies and refuses the rest.
func TestStaticRules(t *testing.T) {
	chains := map[string][]string{}
	for _, c := range staticChains("banger0", netip.MustParsePrefix("10.201.0.0/24")) {
		chains[c.name] = render(c.rules)
	}
	expectRules(t, "input", chains[chainInput], []string{
		"iifname banger0 ct state established,related accept",
		"iifname banger0 drop",
	})
	expectRules(t, "forward", chains[chainForward], []string{
		"oifname banger0 ct state established,related accept",
		"iifname banger0 ct state established accept",
		"iifname banger0 jump egress",
		"iifname banger0 drop",
		"oifname banger0 ct status dnat accept",
		"oifname banger0 drop",
	})
	g := fmt.Sprint(portGroup("banger0"))
	expectRules(t, "bridge prerouting", render(bridgeChains("banger0")[0].rules), []string{
		"iifgroup " + g + " jump ports",
		"iifgroup " + g + " drop",
	})
	if portGroup("banger0") == portGroup("banger1") || portGroup("x") == 0 {
		t.Error("port groups of two bridges are equal, or 0")
	}
}

func TestEgressCommentRoundTrip(t *testing.T) {
	for _, nets := range [][]string{nil, {"a"}, {"ci", "team"}} {
		c := egressComment("vm.1", testVM.IP, nets)
		o, ip, n, ok := parseEgressComment(c)
		if !ok || o != "vm.1" || ip != testVM.IP || strings.Join(n, ",") != strings.Join(nets, ",") {
			t.Errorf("%q read back as %q %v %v %v", c, o, ip, n, ok)
		}
	}
}

func expectRules(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func mustRule(s string) netpolicy.Rule {
	r, err := netpolicy.ParseRule(s)
	if err != nil {
		panic(err)
	}
	return r
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
