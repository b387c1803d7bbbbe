package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

// Defaults for Config.
const (
	DefaultBridge = "banger0"
	DefaultTable  = "banger"
)

// Config says where and how the Manager sets up banger's host network.
// Two daemons may share a network namespace if their bridges, tables and
// guest networks differ: each Manager acts only on its own bridge, the
// taps on it (see Manager.ours) and its own table.
type Config struct {
	// Bridge is the guests' bridge; the pool's gateway address lives on it.
	// Default DefaultBridge.
	Bridge string
	// Pool is the guest network (see NewPool). Required.
	Pool Pool
	// Table is the name of banger's nftables table (family inet). Default
	// DefaultTable. The Manager never touches any other table.
	Table string
	// NetNS is the network namespace to work in. Zero (or netns.None())
	// means the calling thread's namespace at New. The Manager keeps its own
	// duplicate of the handle: the caller may close theirs.
	NetNS netns.NsHandle
	// Logger receives warnings about best-effort cleanups. Default: discard.
	Logger *slog.Logger
	// GuestDNS are the resolvers written into guests: VMs with egress
	// EgressInternet reach them on port 53 (TCP and UDP) even in a
	// reserved range (a LAN or cloud resolver), unless a deny rule says
	// otherwise. A resolver on the host itself is not reachable: guests
	// reach nothing of the host.
	GuestDNS []netip.Addr
}

// Manager owns banger's host networking in one network namespace: the
// bridge, the taps, IPv4 forwarding and banger's nftables table. The kernel
// is the only state: a Manager started over an existing setup (a daemon
// restart) picks it up as it is. Its methods are safe for concurrent use.
type Manager struct {
	bridge string
	pool   Pool
	table  *nftables.Table // family inet: NAT, host input, per-VM egress
	btable *nftables.Table // family bridge, same name: per-tap anti-spoofing
	dns    []netip.Addr
	log    *slog.Logger

	mu sync.Mutex // serializes every change (and the publish conflict check)
	ns netns.NsHandle
	nl *netlink.Handle
}

// New validates cfg and opens netlink in its namespace. It changes nothing
// on the host: EnsureHost does.
func New(cfg Config) (*Manager, error) {
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := validIfname(cfg.Bridge); err != nil {
		return nil, errdefs.InvalidArgument("bridge name %q: %v", cfg.Bridge, err)
	}
	if !cfg.Pool.Prefix().IsValid() {
		return nil, errdefs.InvalidArgument("no guest network configured (hint: e.g. %s)", DefaultCIDR)
	}
	// NewPool already refuses these; a Pool built any other way must not
	// slip through.
	if !cfg.Pool.Prefix().Addr().Is4() || cfg.Pool.Prefix().Bits() > 29 {
		return nil, errdefs.InvalidArgument("guest network %s has no room for guests: it must be IPv4 and /29 or larger (hint: e.g. %s)", cfg.Pool.Prefix(), DefaultCIDR)
	}
	if len(cfg.Table) > 255 {
		return nil, errdefs.InvalidArgument("nftables table name %q is longer than 255 bytes", cfg.Table)
	}
	for _, a := range cfg.GuestDNS {
		if !a.Unmap().Is4() {
			return nil, errdefs.InvalidArgument("guest dns server %s: only IPv4 is supported (guests have no IPv6)", a)
		}
	}
	ns, err := openNetNS(cfg.NetNS)
	if err != nil {
		return nil, errdefs.InvalidArgument("network namespace: %w", err)
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("open netlink in network namespace %s: %w", ns, err)
	}
	return &Manager{
		bridge: cfg.Bridge,
		pool:   cfg.Pool,
		table:  &nftables.Table{Name: cfg.Table, Family: tableFamily},
		btable: &nftables.Table{Name: cfg.Table, Family: bridgeFamily},
		dns:    slices.Clone(cfg.GuestDNS),
		log:    cfg.Logger,
		ns:     ns,
		nl:     nl,
	}, nil
}

// Close releases the Manager's netlink sockets and namespace handle and
// leaves the host network as it is. The Manager must not be used after.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nl == nil {
		return nil
	}
	m.nl.Close()
	m.nl = nil
	return m.ns.Close()
}

// Bridge is the name of the guests' bridge.
func (m *Manager) Bridge() string { return m.bridge }

// Pool is the guest network.
func (m *Manager) Pool() Pool { return m.pool }

// Table is the name of banger's nftables table (family inet).
func (m *Manager) Table() string { return m.table.Name }

// EnsureHost makes the host ready for guests, changing only what differs:
// the bridge (up, with the gateway address), IPv4 forwarding and
// route_localnet on the bridge, and banger's nftables table. Published
// ports survive it: a daemon restart calls it with running VMs.
func (m *Manager) EnsureHost(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.ensureBridge(); err != nil {
		return err
	}
	if err := ensureSysctl(m.ns, "ipv4/ip_forward", "1"); err != nil {
		return classify(err)
	}
	// Lets DNAT send 127.0.0.1-sourced packets (published ports reached
	// via localhost) out of the bridge; the guard chain stops the reverse.
	if err := ensureSysctl(m.ns, "ipv4/conf/"+m.bridge+"/route_localnet", "1"); err != nil {
		return classify(err)
	}
	// Bridge ports are isolated (see attach): guests talk to each other
	// through the host, which answers their ARP requests for one another
	// (private-VLAN proxy ARP), at once rather than after a random delay
	// of up to 0.8 s, and routes what their policies allow.
	if err := ensureSysctl(m.ns, "ipv4/conf/"+m.bridge+"/proxy_arp_pvlan", "1"); err != nil {
		return classify(err)
	}
	if err := ensureSysctl(m.ns, "ipv4/neigh/"+m.bridge+"/proxy_delay", "0"); err != nil {
		return classify(err)
	}
	if err := m.ensureTable(m.table, staticChains(m.bridge, m.pool.Prefix()), []string{publishChain, egressChain}); err != nil {
		return err
	}
	return m.ensureTable(m.btable, bridgeChains(m.bridge), []string{portsChain})
}

func (m *Manager) ensureBridge() error {
	link, err := m.nl.LinkByName(m.bridge)
	if isNotFound(err) {
		if err := m.checkOverlap(0); err != nil {
			return err
		}
		gw := m.pool.Gateway().As4()
		// A fixed MAC: otherwise the bridge takes its lowest port's MAC,
		// which changes as taps come and go and stales guests' ARP caches.
		mac := net.HardwareAddr{0x06, 0xfb, gw[0], gw[1], gw[2], gw[3]}
		if err := m.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: m.bridge, HardwareAddr: mac}}); err != nil {
			return classify(fmt.Errorf("create bridge %q: %w", m.bridge, err))
		}
		link, err = m.nl.LinkByName(m.bridge)
	}
	if err != nil {
		return classify(fmt.Errorf("look up bridge %q: %w", m.bridge, err))
	}
	if link.Type() != "bridge" {
		return errdefs.FailedPrecondition("link %q exists and is a %s, not a bridge (hint: delete it, or configure another bridge name)", m.bridge, link.Type())
	}
	want := netip.PrefixFrom(m.pool.Gateway(), m.pool.Prefix().Bits())
	addrs, err := m.nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return classify(fmt.Errorf("list addresses of bridge %q: %w", m.bridge, err))
	}
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p == want {
			have = true
			continue
		}
		// The bridge is banger's: another IPv4 address is a previous guest
		// network, whose route would shadow or overlap the current one.
		if err := m.nl.AddrDel(link, &a); err != nil {
			return classify(fmt.Errorf("remove stale address %s from bridge %q: %w", a.IPNet, m.bridge, err))
		}
		m.log.Warn("removed stale address from bridge", "bridge", m.bridge, "addr", a.IPNet.String())
	}
	if !have {
		if err := m.checkOverlap(link.Attrs().Index); err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}}
		if err := m.nl.AddrAdd(link, addr); err != nil {
			return classify(fmt.Errorf("add gateway address %s to bridge %q: %w", want, m.bridge, err))
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.LinkSetUp(link); err != nil {
			return classify(fmt.Errorf("set bridge %q up: %w", m.bridge, err))
		}
	}
	return nil
}

// checkOverlap refuses a guest network that overlaps a network the host
// already routes through another link: the bridge's more specific route
// would cut the host off from it (say, its LAN).
func (m *Manager) checkOverlap(bridgeIndex int) error {
	routes, err := m.nl.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return classify(fmt.Errorf("list routes: %w", err))
	}
	for _, r := range routes {
		if r.Dst == nil || r.LinkIndex == bridgeIndex {
			continue // a default route overlaps everything, by design
		}
		dst, ok := prefixOf(r.Dst)
		if !ok || dst.Bits() == 0 || !dst.Overlaps(m.pool.Prefix()) {
			continue
		}
		via := fmt.Sprintf("link %d", r.LinkIndex)
		if l, err := m.nl.LinkByIndex(r.LinkIndex); err == nil {
			via = fmt.Sprintf("%q", l.Attrs().Name)
		}
		return errdefs.FailedPrecondition("guest network %s overlaps %s, which the host routes through %s (hint: choose a guest network that does not overlap, e.g. with --guest-cidr)", m.pool.Prefix(), dst, via)
	}
	return nil
}

func (m *Manager) nft() (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(m.ns)))
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// tableExists looks banger's inet table up without touching any other.
func (m *Manager) tableExists(c *nftables.Conn) (bool, error) {
	return tableExists(c, m.table)
}

func tableExists(c *nftables.Conn, t *nftables.Table) (bool, error) {
	tables, err := c.ListTablesOfFamily(t.Family)
	if err != nil {
		return false, classify(fmt.Errorf("list nftables tables: %w", err))
	}
	for _, have := range tables {
		if have.Name == t.Name {
			return true, nil
		}
	}
	return false, nil
}

// chainsOf lists the chains of table t, by name.
func chainsOf(c *nftables.Conn, t *nftables.Table) (map[string]*nftables.Chain, error) {
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, classify(fmt.Errorf("list chains of nftables table %s %q: %w", familyName(t.Family), t.Name, err))
	}
	out := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == t.Name {
			out[ch.Name] = ch
		}
	}
	return out, nil
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyBridge {
		return "bridge"
	}
	return "inet"
}

// ensureTable brings table t to the static chains specs in one atomic
// batch, sending nothing when it already matches. The regular chains
// named in keep are created when missing and keep their rules (per-VM
// jumps, published ports), and so do the per-VM chains and sets; chains
// banger does not know are removed.
func (m *Manager) ensureTable(t *nftables.Table, specs []chainSpec, keep []string) error {
	c, err := m.nft()
	if err != nil {
		return err
	}
	exists, err := tableExists(c, t)
	if err != nil {
		return err
	}
	existing := map[string]*nftables.Chain{}
	if exists {
		if existing, err = chainsOf(c, t); err != nil {
			return err
		}
	}

	var flush, del []string
	var create []chainSpec // chains to add
	var fill []chainSpec   // chains whose rules to add
	known := map[string]bool{}
	var missing []string // regular chains to add
	for _, name := range keep {
		known[name] = true
		if _, ok := existing[name]; !ok {
			missing = append(missing, name)
		}
	}
	for _, s := range specs {
		known[s.name] = true
		cur, ok := existing[s.name]
		switch {
		case !ok:
			create = append(create, s)
		case !s.matches(cur):
			flush, del = append(flush, s.name), append(del, s.name)
			create = append(create, s)
		default:
			rules, err := c.GetRules(t, cur)
			if err != nil {
				return classify(fmt.Errorf("list rules of chain %q in nftables table %s %q: %w", s.name, familyName(t.Family), t.Name, err))
			}
			if slices.Equal(ruleComments(rules), s.comments()) {
				continue
			}
			flush = append(flush, s.name)
		}
		fill = append(fill, s)
	}
	for name := range existing {
		if !known[name] && !strings.HasPrefix(name, vmChainPrefix) {
			flush, del = append(flush, name), append(del, name)
		}
	}
	if exists && len(missing) == 0 && len(fill) == 0 && len(del) == 0 {
		return nil
	}

	if !exists {
		c.AddTable(t)
	}
	for _, name := range flush {
		c.FlushChain(&nftables.Chain{Name: name, Table: t})
	}
	for _, name := range del {
		c.DelChain(&nftables.Chain{Name: name, Table: t})
	}
	for _, name := range missing {
		c.AddChain(&nftables.Chain{Name: name, Table: t})
	}
	for _, s := range create {
		c.AddChain(s.chain(t))
	}
	for _, s := range fill {
		ch := &nftables.Chain{Name: s.name, Table: t}
		for _, r := range s.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs, UserData: withComment(r.comment)})
		}
	}
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return errdefs.FailedPrecondition("set up nftables table %s %q: %w (hint: the kernel lacks an nftables feature banger needs: the bridge family (CONFIG_NF_TABLES_BRIDGE), fib, ct or nat expressions)", familyName(t.Family), t.Name, err)
		}
		return classify(fmt.Errorf("set up nftables table %s %q: %w", familyName(t.Family), t.Name, err))
	}
	if exists {
		names := make([]string, len(fill))
		for i, s := range fill {
			names[i] = s.name
		}
		m.log.Warn("rebuilt nftables chains that differed from banger's ruleset", "table", t.Name, "family", familyName(t.Family), "chains", names, "removed", del)
	}
	return nil
}

// Teardown removes this Manager's host network: its taps (see ours), then
// its table, then its bridge. Another daemon's taps, table and bridge in
// the same namespace stay, and so does ip_forward (something else may rely
// on it). Missing pieces are not an error.
func (m *Manager) Teardown(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	taps, err := m.ourTaps()
	if err != nil {
		return err
	}
	for _, t := range taps {
		if err := m.deleteLink(t); err != nil {
			errs = append(errs, err)
		}
	}
	for _, t := range []*nftables.Table{m.table, m.btable} {
		if err := m.deleteTable(t); err != nil {
			errs = append(errs, err)
		}
	}
	if link, err := m.nl.LinkByName(m.bridge); err == nil {
		if link.Type() != "bridge" {
			errs = append(errs, errdefs.FailedPrecondition("link %q is a %s, not banger's bridge: left in place", m.bridge, link.Type()))
		} else if err := m.deleteLink(link); err != nil {
			errs = append(errs, err)
		}
	} else if !isNotFound(err) {
		errs = append(errs, classify(fmt.Errorf("look up bridge %q: %w", m.bridge, err)))
	}
	return errors.Join(errs...)
}

func (m *Manager) deleteTable(t *nftables.Table) error {
	c, err := m.nft()
	if err != nil {
		return err
	}
	exists, err := tableExists(c, t)
	if err != nil || !exists {
		return err
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return classify(fmt.Errorf("delete nftables table %s %q: %w", familyName(t.Family), t.Name, err))
	}
	return nil
}

func (m *Manager) deleteLink(link netlink.Link) error {
	if err := m.nl.LinkDel(link); err != nil && !isNotFound(err) {
		return classify(fmt.Errorf("delete %s %q: %w", describe(link), link.Attrs().Name, err))
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return err != nil && (errors.As(err, &nf) || errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENODEV))
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

// classify marks errors the user can act on: lacking privileges.
func classify(err error) error {
	if err != nil && errors.Is(err, os.ErrPermission) {
		return errdefs.FailedPrecondition("%w (hint: banger's host networking needs root, or CAP_NET_ADMIN)", err)
	}
	return err
}
