package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/banger-vm/banger/errdefs"
)

// vmEntry is what banger's tables hold for one VM, read back from them: the
// kernel is the only record, so a restarted daemon finds every VM's rules.
type vmEntry struct {
	ip         netip.Addr
	networks   []string
	egress     []*nftables.Rule // its jumps in the inet egress chain
	ports      []*nftables.Rule // its jumps in the bridge ports chain
	inetChain  bool
	portsChain bool
}

type vmState struct {
	vms  map[string]*vmEntry
	sets map[string][]netip.Addr // network set name -> addresses in it
}

func (st *vmState) entry(owner string) *vmEntry {
	e := st.vms[owner]
	if e == nil {
		e = &vmEntry{}
		st.vms[owner] = e
	}
	return e
}

// The egress jump's comment carries the VM's networks, so the members of
// every network are known from the egress chain alone:
// "vm OWNER IP NET1,NET2" ("-" for none).
func egressComment(owner string, ip netip.Addr, networks []string) string {
	n := "-"
	if len(networks) > 0 {
		n = strings.Join(networks, ",")
	}
	return jumpComment(owner, ip.String()) + " " + n
}

func parseEgressComment(c string) (owner string, ip netip.Addr, networks []string, ok bool) {
	f := strings.Fields(c)
	if len(f) != 4 || f[0] != "vm" {
		return "", netip.Addr{}, nil, false
	}
	ip, err := netip.ParseAddr(f[2])
	if err != nil {
		return "", netip.Addr{}, nil, false
	}
	if f[3] != "-" {
		networks = strings.Split(f[3], ",")
	}
	return f[1], ip, networks, true
}

// readVMs reads the per-VM state of both tables; ok is false when either
// table is missing (the host network is not set up).
func (m *Manager) readVMs(c *nftables.Conn) (st *vmState, ok bool, err error) {
	for _, t := range []*nftables.Table{m.table, m.btable} {
		if exists, err := tableExists(c, t); err != nil || !exists {
			return nil, false, err
		}
	}
	st = &vmState{vms: map[string]*vmEntry{}, sets: map[string][]netip.Addr{}}
	for _, t := range []*nftables.Table{m.table, m.btable} {
		chains, err := chainsOf(c, t)
		if err != nil {
			return nil, false, err
		}
		for name := range chains {
			if owner, ok := strings.CutPrefix(name, vmChainPrefix); ok {
				if t == m.table {
					st.entry(owner).inetChain = true
				} else {
					st.entry(owner).portsChain = true
				}
			}
		}
	}
	rules, err := c.GetRules(m.table, &nftables.Chain{Name: egressChain, Table: m.table})
	if err != nil {
		return nil, false, classify(fmt.Errorf("list rules of chain %q in nftables table inet %q: %w", egressChain, m.table.Name, err))
	}
	for _, r := range rules {
		if owner, ip, nets, ok := parseEgressComment(comment(r)); ok {
			e := st.entry(owner)
			e.ip, e.networks = ip, nets
			e.egress = append(e.egress, r)
		}
	}
	rules, err = c.GetRules(m.btable, &nftables.Chain{Name: portsChain, Table: m.btable})
	if err != nil {
		return nil, false, classify(fmt.Errorf("list rules of chain %q in nftables table bridge %q: %w", portsChain, m.btable.Name, err))
	}
	for _, r := range rules {
		if owner, _, ok := parseJumpComment(comment(r)); ok {
			e := st.entry(owner)
			e.ports = append(e.ports, r)
		}
	}
	sets, err := c.GetSets(m.table)
	if err != nil {
		return nil, false, classify(fmt.Errorf("list sets of nftables table inet %q: %w", m.table.Name, err))
	}
	for _, s := range sets {
		if !strings.HasPrefix(s.Name, netSetPrefix) {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, false, classify(fmt.Errorf("list set %q of nftables table inet %q: %w", s.Name, m.table.Name, err))
		}
		addrs := []netip.Addr{}
		for _, el := range elems {
			if a, ok := netip.AddrFromSlice(el.Key); ok {
				addrs = append(addrs, a)
			}
		}
		st.sets[s.Name] = addrs
	}
	return st, true, nil
}

// ApplyVM installs v's rules, in one nftables batch: anti-spoofing on its
// tap (bridge table), its egress policy and its networks (inet table).
// Rules v.Owner already had are replaced in the same batch, so applying
// the same VMNet again changes nothing a packet would notice. The tap
// should exist (CreateTap): until ApplyVM, frames from it are dropped.
func (m *Manager) ApplyVM(ctx context.Context, v VMNet) error {
	if err := m.checkVMNet(&v); err != nil {
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
	st, ok, err := m.readVMs(c)
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.FailedPrecondition("network rules of vm %q: nftables table %q is missing (hint: the host network is not set up; restarting the daemon sets it up)", v.Owner, m.table.Name)
	}
	if err := m.change(c, st, nil, &v); err != nil {
		return fmt.Errorf("network rules of vm %q: %w", v.Owner, err)
	}
	if err := c.Flush(); err != nil {
		return classify(fmt.Errorf("network rules of vm %q: nftables batch in table %q: %w", v.Owner, m.table.Name, err))
	}
	return nil
}

func (m *Manager) checkVMNet(v *VMNet) error {
	if err := checkOwner(v.Owner); err != nil {
		return err
	}
	if err := validIfname(v.Tap); err != nil {
		return errdefs.InvalidArgument("network rules of vm %q: tap name %q: %v", v.Owner, v.Tap, err)
	}
	v.IP = v.IP.Unmap()
	if !m.isGuestAddr(v.IP) {
		return errdefs.InvalidArgument("network rules of vm %q: %s is not a guest address of %s", v.Owner, v.IP, m.pool.Prefix())
	}
	if len(v.MAC) != 6 || v.MAC[0]&1 != 0 {
		return errdefs.InvalidArgument("network rules of vm %q: %q is not a unicast ethernet MAC address", v.Owner, v.MAC.String())
	}
	if err := v.Policy.Validate(); err != nil {
		return fmt.Errorf("network rules of vm %q: %w", v.Owner, err)
	}
	v.Policy = v.Policy.Normalize()
	return nil
}

// RemoveVM removes every rule of VM owner, in one nftables batch. It is
// idempotent: nothing to remove (or no tables) is not an error.
func (m *Manager) RemoveVM(ctx context.Context, owner string) error {
	if err := checkOwner(owner); err != nil {
		return err
	}
	_, err := m.removeVMs(ctx, func(o string) bool { return o != owner })
	return err
}

// VMs lists the VMs that have rules in banger's tables, sorted.
func (m *Manager) VMs(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, err := m.nft()
	if err != nil {
		return nil, err
	}
	st, ok, err := m.readVMs(c)
	if err != nil || !ok {
		return nil, err
	}
	return slices.Sorted(func(yield func(string) bool) {
		for o := range st.vms {
			if !yield(o) {
				return
			}
		}
	}), nil
}

// RemoveOrphanVMs removes the rules of every VM owned does not claim (the
// daemon's startup sweep: owned is "a VM of the store that may be
// running"), each VM's in one nftables batch (sweepBatch VMs a batch), and
// returns their owners, sorted.
func (m *Manager) RemoveOrphanVMs(ctx context.Context, owned func(owner string) bool) ([]string, error) {
	return m.removeVMs(ctx, owned)
}

// sweepBatch bounds the VMs removed in one nftables batch: the kernel
// acknowledges every message of a batch, and a few hundred VMs' worth
// overflow the socket's receive buffer (ENOBUFS).
const sweepBatch = 32

func (m *Manager) removeVMs(ctx context.Context, keep func(string) bool) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var removed []string
	for {
		c, err := m.nft()
		if err != nil {
			return removed, err
		}
		st, ok, err := m.readVMs(c)
		if err != nil || !ok {
			return removed, err
		}
		var gone []string
		for o := range st.vms {
			if !keep(o) {
				gone = append(gone, o)
			}
		}
		if len(gone) == 0 {
			slices.Sort(removed)
			return removed, nil
		}
		slices.Sort(gone)
		gone = gone[:min(len(gone), sweepBatch)]
		var addrs []netip.Addr
		for _, o := range gone {
			if ip := st.vms[o].ip; ip.IsValid() {
				addrs = append(addrs, ip)
			}
		}
		if err := m.change(c, st, gone, nil); err != nil {
			return removed, fmt.Errorf("remove network rules of vms %q: %w", gone, err)
		}
		if err := c.Flush(); err != nil {
			return removed, classify(fmt.Errorf("remove network rules of vms %q: nftables batch in table %q: %w", gone, m.table.Name, err))
		}
		for _, a := range addrs {
			m.forgetGuestFlows(a)
		}
		removed = append(removed, gone...)
	}
}

// forgetGuestFlows deletes the conntrack entries of a guest address whose
// VM is gone: replies of its flows are let in as established, and would
// reach the next VM given the address. Best effort: the rules are gone.
func (m *Manager) forgetGuestFlows(ip netip.Addr) {
	for _, dir := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackReplySrcIP} {
		f := &netlink.ConntrackFilter{}
		err := f.AddIP(dir, ip.AsSlice())
		if err == nil {
			_, err = m.nl.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, f)
		}
		if err != nil {
			m.log.Warn("could not forget the connections of a removed vm's address", "ip", ip.String(), "error", err)
		}
	}
}

// change queues, on c, the removal of the VMs gone and the (re)install of
// add, then brings the network sets to what the remaining VMs say. st is
// the state read on c.
func (m *Manager) change(c *nftables.Conn, st *vmState, gone []string, add *VMNet) error {
	// The queueing calls fail only on a malformed rule or set; nothing is
	// sent to the kernel before Flush, so the caller drops the batch.
	var errs []error
	queued := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	drop := func(owner string, deleteChains bool) {
		e := st.vms[owner]
		if e == nil {
			return
		}
		for _, r := range e.ports {
			queued(c.DelRule(r))
		}
		for _, r := range e.egress {
			queued(c.DelRule(r))
		}
		if deleteChains {
			if e.portsChain {
				ch := &nftables.Chain{Name: vmChain(owner), Table: m.btable}
				c.FlushChain(ch)
				c.DelChain(ch)
			}
			if e.inetChain {
				ch := &nftables.Chain{Name: vmChain(owner), Table: m.table}
				c.FlushChain(ch)
				c.DelChain(ch)
			}
		}
		delete(st.vms, owner)
	}
	for _, o := range gone {
		drop(o, true)
	}

	var rules vmRules
	if add != nil {
		old := st.vms[add.Owner]
		drop(add.Owner, false)
		rules = buildVMRules(m.bridge, m.dns, *add)
		for _, t := range []*nftables.Table{m.btable, m.table} {
			ch := &nftables.Chain{Name: vmChain(add.Owner), Table: t}
			if old != nil && (t == m.btable && old.portsChain || t == m.table && old.inetChain) {
				c.FlushChain(ch)
			} else {
				c.AddChain(ch)
			}
		}
		st.vms[add.Owner] = &vmEntry{ip: add.IP, networks: rules.networks}
	}

	// Network sets: exactly the addresses of the VMs that name them.
	want := map[string][]netip.Addr{}
	for _, e := range st.vms {
		for _, n := range e.networks {
			want[netSet(n)] = append(want[netSet(n)], e.ip)
		}
	}
	for name, addrs := range want {
		set := &nftables.Set{Table: m.table, Name: name, KeyType: nftables.TypeIPAddr}
		have, exists := st.sets[name]
		if !exists {
			queued(c.AddSet(set, nil))
		}
		if add := diff(addrs, have); len(add) > 0 {
			queued(c.SetAddElements(set, elements(add)))
		}
		if del := diff(have, addrs); len(del) > 0 {
			queued(c.SetDeleteElements(set, elements(del)))
		}
	}

	if add != nil {
		for _, r := range rules.bridge {
			c.AddRule(&nftables.Rule{Table: m.btable, Chain: &nftables.Chain{Name: vmChain(add.Owner), Table: m.btable}, Exprs: r.exprs, UserData: withComment(r.comment)})
		}
		c.AddRule(&nftables.Rule{Table: m.btable, Chain: &nftables.Chain{Name: portsChain, Table: m.btable}, Exprs: rules.portJump.exprs, UserData: withComment(rules.portJump.comment)})
		for _, r := range rules.inet {
			c.AddRule(&nftables.Rule{Table: m.table, Chain: &nftables.Chain{Name: vmChain(add.Owner), Table: m.table}, Exprs: r.exprs, UserData: withComment(r.comment)})
		}
		c.AddRule(&nftables.Rule{Table: m.table, Chain: &nftables.Chain{Name: egressChain, Table: m.table}, Exprs: rules.egressJump.exprs, UserData: withComment(egressComment(add.Owner, add.IP, rules.networks))})
	}

	// Sets no VM names any more: no rule refers to them now.
	for name := range st.sets {
		if _, ok := want[name]; !ok {
			c.DelSet(&nftables.Set{Table: m.table, Name: name})
		}
	}
	return errors.Join(errs...)
}

func diff(a, b []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, x := range a {
		if !slices.Contains(b, x) && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

func elements(addrs []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, len(addrs))
	for i, a := range addrs {
		b := a.As4()
		out[i] = nftables.SetElement{Key: b[:]}
	}
	return out
}
