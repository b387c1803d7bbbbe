package network

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/netpolicy"
)

// Protocols a port can be published for.
const (
	ProtoTCP = netpolicy.ProtoTCP
	ProtoUDP = netpolicy.ProtoUDP
)

// Publish maps a port of the host to a port of a guest.
type Publish struct {
	HostPort  uint16 `json:"host_port"`
	GuestPort uint16 `json:"guest_port"`
	Proto     string `json:"proto"` // ProtoTCP or ProtoUDP
}

// String is the --publish form: "8080:80/tcp".
func (p Publish) String() string { return fmt.Sprintf("%d:%d/%s", p.HostPort, p.GuestPort, p.Proto) }

// Published is a port published for a VM, as banger's table holds it.
type Published struct {
	Publish
	Owner   string     `json:"owner"` // the VM's ID
	GuestIP netip.Addr `json:"guest_ip"`
}

const publishHint = "(hint: HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80 or 5353:53/udp)"

// ParsePublish parses HOSTPORT:GUESTPORT[/tcp|/udp]; the protocol defaults
// to tcp. Errors are errdefs.InvalidArgument and say what is wrong.
func ParsePublish(s string) (Publish, error) {
	bad := func(format string, args ...any) (Publish, error) {
		return Publish{}, errdefs.InvalidArgument("port mapping %q: %s %s", s, fmt.Sprintf(format, args...), publishHint)
	}
	spec, proto, hasProto := strings.Cut(s, "/")
	host, guest, ok := strings.Cut(spec, ":")
	if !ok {
		return bad(`has no ":" between the host port and the guest port`)
	}
	if strings.Contains(guest, ":") {
		return bad(`has more than one ":" (publishing on one host address is not supported)`)
	}
	p := Publish{Proto: ProtoTCP}
	var problem string
	if p.HostPort, problem = parsePort("host", host); problem != "" {
		return bad("%s", problem)
	}
	if p.GuestPort, problem = parsePort("guest", guest); problem != "" {
		return bad("%s", problem)
	}
	if hasProto {
		switch strings.ToLower(proto) {
		case ProtoTCP, ProtoUDP:
			p.Proto = strings.ToLower(proto)
		case "":
			return bad(`has no protocol after "/"`)
		default:
			return bad("protocol %q is not supported: use tcp or udp", proto)
		}
	}
	return p, nil
}

func parsePort(which, s string) (uint16, string) {
	if s == "" {
		return 0, which + " port is empty"
	}
	if strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Sprintf("%s port %q is not a number", which, s)
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Sprintf("%s port %s is out of range 1-65535", which, s)
	}
	return uint16(n), ""
}

func (p Publish) validate() error {
	if p.HostPort == 0 || p.GuestPort == 0 {
		return errdefs.InvalidArgument("port mapping %s: ports must be 1-65535 %s", p, publishHint)
	}
	if p.Proto != ProtoTCP && p.Proto != ProtoUDP {
		return errdefs.InvalidArgument("port mapping %s: protocol %q is not supported: use tcp or udp", p, p.Proto)
	}
	return nil
}

// Owners are VM IDs; they are written into rule comments, so they are kept
// to a safe alphabet and length.
func checkOwner(owner string) error {
	if owner == "" || len(owner) > 64 || strings.Trim(owner, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
		return errdefs.InvalidArgument("publish owner %q must be a VM ID: 1-64 letters, digits, '.', '_' or '-'", owner)
	}
	return nil
}

// A published port's rule comment: "vm OWNER HOSTPORT/PROTO -> IP:PORT".
// It is what Published and Unpublish read back.
func publishComment(owner string, guest netip.Addr, p Publish) string {
	return fmt.Sprintf("vm %s %d/%s -> %s", owner, p.HostPort, p.Proto, netip.AddrPortFrom(guest, p.GuestPort))
}

func parsePublishComment(c string) (Published, bool) {
	f := strings.Fields(c)
	if len(f) != 5 || f[0] != "vm" || f[3] != "->" {
		return Published{}, false
	}
	port, proto, ok := strings.Cut(f[2], "/")
	hp, err := strconv.ParseUint(port, 10, 16)
	if !ok || err != nil {
		return Published{}, false
	}
	dst, err := netip.ParseAddrPort(f[4])
	if err != nil {
		return Published{}, false
	}
	return Published{
		Publish: Publish{HostPort: uint16(hp), GuestPort: dst.Port(), Proto: proto},
		Owner:   f[1],
		GuestIP: dst.Addr(),
	}, true
}

// Publish makes host port p.HostPort/p.Proto lead to guestIP:p.GuestPort
// for VM owner: a DNAT rule, tagged with owner, that answers on every
// local address of the host (127.0.0.1 included) and on the gateway for
// other guests. A port already published (by any VM) or held by a host
// process is errdefs.Conflict. Publishing exactly the same mapping again
// for the same owner does nothing.
func (m *Manager) Publish(ctx context.Context, owner string, guestIP netip.Addr, p Publish) error {
	return m.PublishAll(ctx, owner, guestIP, []Publish{p})
}

// PublishAll publishes every port of ps for VM owner (see Publish) in one
// nftables batch: all are checked first, then all rules are added with a
// single flush, so the time is linear in len(ps) and a refusal adds none.
func (m *Manager) PublishAll(ctx context.Context, owner string, guestIP netip.Addr, ps []Publish) error {
	if err := checkOwner(owner); err != nil {
		return err
	}
	for _, p := range ps {
		if err := p.validate(); err != nil {
			return err
		}
	}
	guestIP = guestIP.Unmap()
	if !m.isGuestAddr(guestIP) {
		return errdefs.InvalidArgument("publish ports for vm %q: %s is not a guest address of %s", owner, guestIP, m.pool.Prefix())
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.nft()
	if err != nil {
		return err
	}
	all, exists, err := m.published(c)
	if err != nil {
		return err
	}
	if !exists {
		return errdefs.FailedPrecondition("publish ports for vm %q: nftables table inet %q is missing (hint: the host network is not set up; restarting the daemon sets it up)", owner, m.table.Name)
	}
	type key struct {
		port  uint16
		proto string
	}
	held := make(map[key]Published, len(all))
	for _, q := range all {
		held[key{q.HostPort, q.Proto}] = q
	}
	added := 0
	for _, p := range ps {
		if q, ok := held[key{p.HostPort, p.Proto}]; ok {
			if q.Owner == owner && q.GuestIP == guestIP && q.GuestPort == p.GuestPort {
				continue // already published, as asked
			}
			return errdefs.Conflict("host port %d/%s is already published by vm %q (to %s) (hint: choose another host port)", p.HostPort, p.Proto, q.Owner, netip.AddrPortFrom(q.GuestIP, q.GuestPort))
		}
		free, err := portFree(m.ns, p.Proto, p.HostPort)
		if err != nil {
			return err
		}
		if !free {
			return errdefs.Conflict("host port %d/%s is in use by a process on the host (hint: choose another host port)", p.HostPort, p.Proto)
		}
		held[key{p.HostPort, p.Proto}] = Published{Publish: p, Owner: owner, GuestIP: guestIP}
		c.AddRule(&nftables.Rule{
			Table:    m.table,
			Chain:    &nftables.Chain{Name: publishChain, Table: m.table},
			Exprs:    dnatRule(p, guestIP),
			UserData: withComment(publishComment(owner, guestIP, p)),
		})
		added++
	}
	if added == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return classify(fmt.Errorf("publish %d ports for vm %q: add rules to nftables table inet %q: %w", added, owner, m.table.Name, err))
	}
	return nil
}

// Unpublish removes every port published for owner, and nothing else. It
// is idempotent: no rule (or no table) is not an error.
func (m *Manager) Unpublish(ctx context.Context, owner string) error {
	if err := checkOwner(owner); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.nft()
	if err != nil {
		return err
	}
	rules, exists, err := m.publishRules(c)
	if err != nil || !exists {
		return err
	}
	var removed []Published
	for _, r := range rules {
		if q, ok := parsePublishComment(comment(r)); ok && q.Owner == owner {
			if err := c.DelRule(r); err != nil {
				return fmt.Errorf("unpublish ports of vm %q: %w", owner, err)
			}
			removed = append(removed, q)
		}
	}
	if len(removed) == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return classify(fmt.Errorf("unpublish ports of vm %q: delete rules from nftables table inet %q: %w", owner, m.table.Name, err))
	}
	for _, q := range removed {
		m.forgetFlows(q)
	}
	return nil
}

// forgetFlows deletes the conntrack entries a published port created.
// Without this a UDP flow (and an open TCP connection) would keep being
// translated to the guest address after the rule is gone, and would reach
// whichever VM gets that address next. Best effort: the rule is gone
// either way.
func (m *Manager) forgetFlows(q Published) {
	proto := uint8(unix.IPPROTO_TCP)
	if q.Proto == ProtoUDP {
		proto = unix.IPPROTO_UDP
	}
	f := &netlink.ConntrackFilter{}
	err := f.AddProtocol(proto)
	if err == nil {
		err = f.AddPort(netlink.ConntrackOrigDstPort, q.HostPort)
	}
	if err == nil {
		err = f.AddIP(netlink.ConntrackReplySrcIP, q.GuestIP.AsSlice())
	}
	if err == nil {
		_, err = m.nl.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, f)
	}
	if err != nil {
		m.log.Warn("could not forget the connections of an unpublished port", "vm", q.Owner, "publish", q.Publish.String(), "error", err)
	}
}

// Published lists the published ports, by protocol and host port. With no
// table there is nothing published.
func (m *Manager) Published(ctx context.Context) ([]Published, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.nft()
	if err != nil {
		return nil, err
	}
	all, _, err := m.published(c)
	return all, err
}

func (m *Manager) published(c *nftables.Conn) ([]Published, bool, error) {
	rules, exists, err := m.publishRules(c)
	if err != nil || !exists {
		return nil, exists, err
	}
	var out []Published
	for _, r := range rules {
		if q, ok := parsePublishComment(comment(r)); ok {
			out = append(out, q)
		}
	}
	slices.SortFunc(out, func(a, b Published) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.HostPort, b.HostPort))
	})
	return out, true, nil
}

func (m *Manager) publishRules(c *nftables.Conn) ([]*nftables.Rule, bool, error) {
	exists, err := m.tableExists(c)
	if err != nil || !exists {
		return nil, exists, err
	}
	rules, err := c.GetRules(m.table, &nftables.Chain{Name: publishChain, Table: m.table})
	if err != nil {
		return nil, true, classify(fmt.Errorf("list rules of chain %q in nftables table inet %q: %w", publishChain, m.table.Name, err))
	}
	return rules, true, nil
}

// isGuestAddr: inside the pool, and neither its network, gateway nor
// broadcast address.
func (m *Manager) isGuestAddr(a netip.Addr) bool {
	p := m.pool.Prefix()
	if !a.Is4() || !p.Contains(a) || a == p.Addr() || a == m.pool.Gateway() {
		return false
	}
	return p.Contains(a.Next())
}
