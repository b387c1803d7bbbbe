// Package netpolicy is what a VM's guest may reach, as `vm create --egress
// --allow --deny --network` give it: parsed, checked and summarised here,
// in a package light enough for the CLI; internal/network enforces it with
// nftables (see the rules there).
package netpolicy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/banger-vm/banger/errdefs"
)

// Protocols a rule (or a published port) is for.
const (
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// Egress modes: what a guest reaches beyond its own networks when no
// allow or deny rule says otherwise.
const (
	// EgressInternet: public IPv4 destinations only (see ReservedRanges).
	EgressInternet = "internet"
	// EgressNone: nothing.
	EgressNone = "none"
)

// ReservedRanges are the IPv4 destinations EgressInternet refuses: every
// range that is not public (RFC 6890 special-purpose, RFC 1918 private,
// CGNAT, link-local where cloud metadata services live, loopback,
// multicast, documentation and future-use ranges). The guest network is in
// them too (10/8, 172.16/12 or 192.168/16 in practice); guests reach each
// other only through a shared network. The host's own addresses are
// refused before any policy (see the input chain).
var ReservedRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("192.88.99.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"), // 255.255.255.255 included
}

// Policy is what a VM's guest may reach, besides replies to connections
// made to it. Guests never reach the host's own addresses (published
// ports included), whatever their policy.
type Policy struct {
	// Egress is EgressInternet or EgressNone; empty means EgressInternet.
	Egress string `json:"egress,omitempty"`
	// Deny rules are checked first: a match is dropped.
	Deny []Rule `json:"deny,omitempty"`
	// Allow rules next: a match goes out, even to a reserved range (a LAN
	// service, say). Other guests are reached only through Networks.
	Allow []Rule `json:"allow,omitempty"`
	// Networks are the named networks the VM joins: VMs that share one
	// reach each other (any port, both ways). None: the VM is isolated
	// from every other guest.
	Networks []string `json:"networks,omitempty"`
}

// Rule matches destinations: a CIDR, and optionally a port range and a
// protocol (both tcp and udp when unset with a port range; any protocol,
// ICMP included, without one).
type Rule struct {
	Net   netip.Prefix `json:"-"`
	Proto string       `json:"-"` // "", ProtoTCP or ProtoUDP
	// FromPort and ToPort are the port range; 0 means any port.
	FromPort uint16 `json:"-"`
	ToPort   uint16 `json:"-"`
}

const ruleHint = "(hint: CIDR[:PORT[-PORT][/tcp|/udp]], e.g. 10.0.0.0/8:443/tcp, 1.1.1.1:53/udp, 192.168.1.0/24)"

// ParseRule parses the --allow/--deny form CIDR[:PORT[-PORT][/tcp|/udp]].
// An address without a prefix length is one host (/32). A port range
// without a protocol means tcp and udp. IPv4 only: guests have no IPv6.
func ParseRule(s string) (Rule, error) {
	bad := func(format string, args ...any) (Rule, error) {
		return Rule{}, errdefs.InvalidArgument("rule %q: %s %s", s, fmt.Sprintf(format, args...), ruleHint)
	}
	if strings.Count(s, ":") > 1 || strings.Contains(s, "[") {
		return bad("only IPv4 is supported (guests have no IPv6)")
	}
	addr, ports, hasPorts := strings.Cut(s, ":")
	var r Rule
	if strings.Contains(addr, "/") {
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return bad("%q is not a CIDR", addr)
		}
		if p != p.Masked() {
			return bad("%s has host bits set (did you mean %s?)", p, p.Masked())
		}
		r.Net = p
	} else {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return bad("%q is not an IP address or CIDR", addr)
		}
		r.Net = netip.PrefixFrom(a, a.BitLen())
	}
	if !r.Net.Addr().Is4() {
		return bad("only IPv4 is supported (guests have no IPv6)")
	}
	if !hasPorts {
		return r, nil
	}
	ports, proto, hasProto := strings.Cut(ports, "/")
	if hasProto {
		if proto != ProtoTCP && proto != ProtoUDP {
			return bad("protocol %q is not tcp or udp", proto)
		}
		r.Proto = proto
	}
	from, to, isRange := strings.Cut(ports, "-")
	var err error
	if r.FromPort, err = ruleport(from); err != nil {
		return bad("%v", err)
	}
	r.ToPort = r.FromPort
	if isRange {
		if r.ToPort, err = ruleport(to); err != nil {
			return bad("%v", err)
		}
		if r.ToPort < r.FromPort {
			return bad("port range %d-%d is backwards", r.FromPort, r.ToPort)
		}
	}
	return r, nil
}

func ruleport(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// String is the --allow/--deny form ParseRule reads back.
func (r Rule) String() string {
	s := r.Net.String()
	if r.Net.Bits() == 32 {
		s = r.Net.Addr().String()
	}
	if r.FromPort == 0 {
		return s
	}
	s += ":" + strconv.Itoa(int(r.FromPort))
	if r.ToPort != r.FromPort {
		s += "-" + strconv.Itoa(int(r.ToPort))
	}
	if r.Proto != "" {
		s += "/" + r.Proto
	}
	return s
}

// MarshalText stores a rule in its --allow form (JSON: a string).
func (r Rule) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads the --allow form.
func (r *Rule) UnmarshalText(b []byte) error {
	v, err := ParseRule(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// Protos are the protocols the rule matches: nil for any.
func (r Rule) Protos() []string {
	switch {
	case r.FromPort == 0:
		return nil
	case r.Proto != "":
		return []string{r.Proto}
	default:
		return []string{ProtoTCP, ProtoUDP}
	}
}

// maxNetworks bounds the named networks of one VM (each is a rule and a
// set lookup per packet); maxRules its allow and deny rules together (each
// is one or two rules per packet, and one VM's rules go in one batch).
const (
	maxNetworks = 16
	maxRules    = 64
)

// ParsePolicy builds a policy from the `vm create` flags: --egress (empty
// for the default), --allow and --deny rules, --network names. Errors are
// errdefs.InvalidArgument and name the bad value.
func ParsePolicy(egress string, allow, deny, networks []string) (Policy, error) {
	p := Policy{Egress: egress}
	for _, s := range allow {
		r, err := ParseRule(s)
		if err != nil {
			return Policy{}, fmt.Errorf("--allow: %w", err)
		}
		p.Allow = append(p.Allow, r)
	}
	for _, s := range deny {
		r, err := ParseRule(s)
		if err != nil {
			return Policy{}, fmt.Errorf("--deny: %w", err)
		}
		p.Deny = append(p.Deny, r)
	}
	p.Networks = networks
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p.Normalize(), nil
}

// Validate checks a policy (one read back from storage, say).
func (p Policy) Validate() error {
	switch p.Egress {
	case "", EgressInternet, EgressNone:
	default:
		return errdefs.InvalidArgument("egress %q is not %q or %q (hint: --egress internet, or --egress none with --allow rules for what the guest may reach)", p.Egress, EgressInternet, EgressNone)
	}
	if n := len(p.Allow) + len(p.Deny); n > maxRules {
		return errdefs.InvalidArgument("a vm has at most %d allow and deny rules, not %d (hint: use wider CIDRs or port ranges)", maxRules, n)
	}
	for _, r := range slices.Concat(p.Allow, p.Deny) {
		if !r.Net.IsValid() || !r.Net.Addr().Is4() || r.Net != r.Net.Masked() {
			return errdefs.InvalidArgument("rule %q: not an IPv4 CIDR %s", r.String(), ruleHint)
		}
		if (r.FromPort == 0) != (r.ToPort == 0) || r.ToPort < r.FromPort || (r.Proto != "" && r.FromPort == 0) {
			return errdefs.InvalidArgument("rule %q: bad port range %s", r.String(), ruleHint)
		}
		if r.Proto != "" && r.Proto != ProtoTCP && r.Proto != ProtoUDP {
			return errdefs.InvalidArgument("rule %q: protocol %q is not tcp or udp", r.String(), r.Proto)
		}
	}
	if len(p.Networks) > maxNetworks {
		return errdefs.InvalidArgument("a vm joins at most %d networks, not %d", maxNetworks, len(p.Networks))
	}
	for _, n := range p.Networks {
		if err := checkNetworkName(n); err != nil {
			return err
		}
	}
	return nil
}

// checkNetworkName: network names become nftables set names.
func checkNetworkName(n string) error {
	ok := n != "" && len(n) <= 32 && n[0] != '-'
	for _, c := range n {
		ok = ok && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-')
	}
	if !ok {
		return errdefs.InvalidArgument("network name %q must be 1-32 lowercase letters, digits or '-', not starting with '-' (hint: --network default)", n)
	}
	return nil
}

// Normalize fills the default egress and sorts and dedups the networks;
// rules keep their order (it does not matter: any deny beats any allow).
func (p Policy) Normalize() Policy {
	if p.Egress == "" {
		p.Egress = EgressInternet
	}
	p.Networks = slices.Compact(slices.Sorted(slices.Values(p.Networks)))
	if len(p.Networks) == 0 {
		p.Networks = nil
	}
	return p
}

// String is the one-line summary `vm show` prints, e.g.
// "egress internet; deny 1.2.3.4; allow 10.0.0.0/8:443/tcp; networks default".
func (p Policy) String() string {
	p = p.Normalize()
	parts := []string{"egress " + p.Egress}
	list := func(what string, rules []Rule) {
		if len(rules) == 0 {
			return
		}
		s := make([]string, len(rules))
		for i, r := range rules {
			s[i] = r.String()
		}
		parts = append(parts, what+" "+strings.Join(s, ","))
	}
	list("deny", p.Deny)
	list("allow", p.Allow)
	if len(p.Networks) > 0 {
		parts = append(parts, "networks "+strings.Join(p.Networks, ","))
	} else {
		parts = append(parts, "isolated")
	}
	return strings.Join(parts, "; ")
}
