package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

// TapPrefix starts the name of every tap banger creates: "tap-fc-<short
// id>" (see layout.TapName). Links with this prefix belong to banger, but
// not necessarily to this Manager: two daemons may share a network
// namespace, each with its own bridge and table (see Manager.ours).
const TapPrefix = "tap-fc-"

// tapAliasPrefix starts the alias (IFLA_IFALIAS, `ip link set alias`) of a
// banger tap; the bridge's name follows. The alias tells whose a tap is
// while it is on no bridge: between its creation and its attachment, or
// after its bridge was deleted (which frees every port).
const tapAliasPrefix = "banger tap of bridge "

// tapFlags are the flags Firecracker and QEMU open a tap with: a tap (L2
// frames) with no packet-info header and a virtio-net header. They are
// per-open (each opener sets its own), but creating the tap with them
// makes it look, while idle, the way it will in use. Not multi-queue: both
// VMMs open one queue, and a multi-queue tap refuses single-queue opens.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// IsTapName reports whether name is shaped like a banger tap: TapPrefix,
// something after it, and a valid interface name (at most 15 bytes).
func IsTapName(name string) bool {
	return strings.HasPrefix(name, TapPrefix) && len(name) > len(TapPrefix) && validIfname(name) == nil
}

func validIfname(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("must be 1 to %d bytes", unix.IFNAMSIZ-1)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n%") {
		return errors.New(`must not be "." or ".." nor contain '/', ':', '%' or spaces`)
	}
	return nil
}

func checkTapName(name string) error {
	if !IsTapName(name) {
		return errdefs.InvalidArgument("tap name %q is not a banger tap name (hint: %s<short vm id>, at most %d bytes, e.g. %sabcdef01)", name, TapPrefix, unix.IFNAMSIZ-1, TapPrefix)
	}
	return nil
}

// CreateTap creates the persistent tap name, owned by uid owner (the user
// the VMM runs as: root, or a jailed Firecracker's), labels it with the
// bridge (tapAliasPrefix), attaches it to the bridge and sets it up; the
// VMM opens it by name. A tap of that name that is already this Manager's
// (see ours) is reused (a start retried after a crash); any other link of
// that name is an error, never taken over. The bridge must exist
// (EnsureHost).
func (m *Manager) CreateTap(ctx context.Context, name string, owner int) error {
	if err := checkTapName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := m.nl.LinkByName(m.bridge)
	if isNotFound(err) {
		return errdefs.FailedPrecondition("create tap %q: bridge %q does not exist (hint: the host network is not set up; restarting the daemon sets it up)", name, m.bridge)
	}
	if err != nil {
		return classify(fmt.Errorf("create tap %q: look up bridge %q: %w", name, m.bridge, err))
	}

	link, err := m.nl.LinkByName(name)
	switch {
	case err == nil:
		if !isTap(link) || !m.ours(link, br.Attrs().Index) {
			return errdefs.AlreadyExists("create tap %q: a %s of that name exists and is not a tap of bridge %q (hint: if it is stale, delete it: ip link delete %s)", name, describe(link), m.bridge, name)
		}
		return classify(m.attach(link, br))
	case !isNotFound(err):
		return classify(fmt.Errorf("create tap %q: %w", name, err))
	}

	if owner < 0 {
		return errdefs.InvalidArgument("create tap %q: owner uid %d is negative", name, owner)
	}
	if err := m.createTap(name, owner); err != nil {
		return err
	}
	link, err = m.nl.LinkByName(name)
	if err == nil {
		err = m.attach(link, br)
	} else {
		err = fmt.Errorf("look up new tap %q: %w", name, err)
	}
	if err != nil {
		// Undo: the tap is persistent, it would outlive this failure.
		if derr := m.nl.LinkDel(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}}); derr != nil && !isNotFound(derr) {
			m.log.Warn("could not delete tap after a failed create", "tap", name, "error", derr)
		}
		return classify(err)
	}
	return nil
}

// createTap creates a persistent tap, owned by owner and labelled with
// the bridge, on no bridge. The label is set before the tap is made
// persistent, so that a banger tap never exists without it.
func (m *Manager) createTap(name string, owner int) error {
	err := inNetNS(m.ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		// Closing the only fd of a tap that is not (yet) persistent
		// removes it: every early return below cleans up by itself.
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		// TUN_EXCL: fail rather than attach to a tap created meanwhile.
		ifr.SetUint16(tapFlags | unix.IFF_TUN_EXCL)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, owner); err != nil {
			return fmt.Errorf("TUNSETOWNER: %w", err)
		}
		if err := m.nl.LinkSetAlias(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}}, m.tapAlias()); err != nil {
			return fmt.Errorf("set alias: %w", err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			return fmt.Errorf("TUNSETPERSIST: %w", err)
		}
		return nil
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST):
		return errdefs.AlreadyExists("create tap %q: a link of that name appeared meanwhile: %w", name, err)
	case errors.Is(err, os.ErrNotExist):
		return errdefs.FailedPrecondition("create tap %q: /dev/net/tun is missing (hint: modprobe tun): %w", name, err)
	}
	return classify(fmt.Errorf("create tap %q: %w", name, err))
}

// attach makes link a guest port of the bridge, changing only what
// differs: labelled (a tap of an older banger is not), enslaved, isolated,
// in the bridge's port group, up. (Older bangers set hairpin mode, for
// guests reaching published ports through the host; guests no longer do,
// and on an isolated port it lets nothing through.)
func (m *Manager) attach(link, br netlink.Link) error {
	name := link.Attrs().Name
	if link.Attrs().Alias != m.tapAlias() {
		if err := m.nl.LinkSetAlias(link, m.tapAlias()); err != nil {
			return fmt.Errorf("set alias of %q: %w", name, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.nl.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach %q to bridge %q: %w", name, m.bridge, err)
		}
	}
	pi, err := m.nl.LinkGetProtinfo(link)
	if err != nil {
		return fmt.Errorf("read bridge port flags of %q: %w", name, err)
	}
	// Its group marks it a port of this bridge for the bridge table.
	if g := int(portGroup(m.bridge)); int(link.Attrs().Group) != g {
		if err := m.nl.LinkSetGroup(link, g); err != nil {
			return fmt.Errorf("set the group of bridge port %q: %w", name, err)
		}
	}
	// Isolated: the bridge forwards nothing between guest ports, so guests
	// reach each other only through the host, where their policies are
	// (see the forward chain), whether or not br_netfilter is loaded.
	if !pi.Isolated {
		if err := m.nl.LinkSetIsolated(link, true); err != nil {
			return fmt.Errorf("isolate bridge port %q: %w", name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %q up: %w", name, err)
		}
	}
	return nil
}

// DeleteTap deletes banger's tap name. A missing tap is not an error; a
// link of that name that is not a tap, or a tap that is another Manager's
// (a port of another bridge, or labelled with one), is refused.
func (m *Manager) DeleteTap(ctx context.Context, name string) error {
	if err := checkTapName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	link, err := m.nl.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return classify(fmt.Errorf("delete tap %q: %w", name, err))
	}
	if !isTap(link) {
		return errdefs.FailedPrecondition("delete tap %q: it is a %s, not a tap: left in place", name, describe(link))
	}
	br, err := m.bridgeIndex()
	if err != nil {
		return err
	}
	if m.foreign(link, br) {
		return errdefs.FailedPrecondition("delete tap %q: it is not a tap of bridge %q (%s): left in place", name, m.bridge, m.whose(link))
	}
	return m.deleteLink(link)
}

// OrphanTaps lists this Manager's taps (TapPrefix, tap mode, and ours)
// that owned reports no VM owns. It changes nothing. Another daemon's taps
// in the same namespace are never listed.
func (m *Manager) OrphanTaps(ctx context.Context, owned func(name string) bool) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := m.orphans(owned)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(links))
	for i, l := range links {
		names[i] = l.Attrs().Name
	}
	return names, nil
}

// RemoveOrphanTaps deletes the taps OrphanTaps lists (the daemon calls it
// at start-up) and returns the names it removed. It goes on past a failure
// and returns the failures joined. Links that are not banger taps are never
// touched.
func (m *Manager) RemoveOrphanTaps(ctx context.Context, owned func(name string) bool) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	links, err := m.orphans(owned)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, l := range links {
		if err := m.deleteLink(l); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, l.Attrs().Name)
	}
	return removed, errors.Join(errs...)
}

func (m *Manager) orphans(owned func(string) bool) ([]netlink.Link, error) {
	taps, err := m.ourTaps()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(taps, func(l netlink.Link) bool { return owned(l.Attrs().Name) }), nil
}

// ourTaps lists the links named like banger taps that are taps and this
// Manager's (see ours), sorted.
func (m *Manager) ourTaps() ([]netlink.Link, error) {
	br, err := m.bridgeIndex()
	if err != nil {
		return nil, err
	}
	var links []netlink.Link
	for range 3 { // a dump races with link changes; the kernel says so
		links, err = m.nl.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, classify(fmt.Errorf("list links: %w", err))
	}
	var taps []netlink.Link
	for _, l := range links {
		if IsTapName(l.Attrs().Name) && isTap(l) && m.ours(l, br) {
			taps = append(taps, l)
		}
	}
	slices.SortFunc(taps, func(a, b netlink.Link) int { return strings.Compare(a.Attrs().Name, b.Attrs().Name) })
	return taps, nil
}

// tapAlias labels this Manager's taps (see tapAliasPrefix).
func (m *Manager) tapAlias() string { return tapAliasPrefix + m.bridge }

// bridgeIndex is the bridge's interface index, 0 if it does not exist.
func (m *Manager) bridgeIndex() (int, error) {
	br, err := m.nl.LinkByName(m.bridge)
	if isNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, classify(fmt.Errorf("look up bridge %q: %w", m.bridge, err))
	}
	return br.Attrs().Index, nil
}

// ours reports whether a tap is this Manager's, given its bridge's index
// (0: no bridge): a port of the bridge, or on no bridge and labelled with
// it. A tap on no bridge and without a label (made by another program, or
// by a banger older than the label, whose bridge has since gone) could be
// another daemon's: it is not ours, so orphan removal leaves it in place
// rather than risk deleting a running VM's tap.
func (m *Manager) ours(l netlink.Link, bridge int) bool {
	if master := l.Attrs().MasterIndex; master != 0 {
		return master == bridge
	}
	return l.Attrs().Alias == m.tapAlias()
}

// foreign reports whether a tap is known to be someone else's: a port of
// another bridge (or of anything, when ours does not exist), or labelled
// with another bridge.
func (m *Manager) foreign(l netlink.Link, bridge int) bool {
	if master := l.Attrs().MasterIndex; master != 0 {
		return master != bridge
	}
	a := l.Attrs().Alias
	return strings.HasPrefix(a, tapAliasPrefix) && a != m.tapAlias()
}

// whose says what a foreign tap belongs to, for error messages.
func (m *Manager) whose(l netlink.Link) string {
	if master := l.Attrs().MasterIndex; master != 0 {
		if ml, err := m.nl.LinkByIndex(master); err == nil {
			return fmt.Sprintf("it is a port of %q", ml.Attrs().Name)
		}
		return fmt.Sprintf("it is a port of link %d", master)
	}
	return fmt.Sprintf("its alias is %q", l.Attrs().Alias)
}

func isTap(l netlink.Link) bool {
	t, ok := l.(*netlink.Tuntap)
	return ok && t.Mode == netlink.TUNTAP_MODE_TAP
}

func describe(l netlink.Link) string {
	if t, ok := l.(*netlink.Tuntap); ok {
		if t.Mode == netlink.TUNTAP_MODE_TAP {
			return "tap"
		}
		return "tun"
	}
	return l.Type()
}

// ForgetNeighbour removes the host's neighbour (ARP) entry for ip on the
// bridge, if any: an address that changed hands (a deleted VM's, given to
// a new VM or a fork, or a VM moved to a new address) must be resolved
// again, not reached at the MAC the host last saw for it, which drops
// every packet until the entry ages out.
func (m *Manager) ForgetNeighbour(ip netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := m.nl.LinkByName(m.bridge)
	if err != nil {
		return classify(fmt.Errorf("forget the neighbour %s: look up bridge %q: %w", ip, m.bridge, err))
	}
	err = m.nl.NeighDel(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, IP: ip.AsSlice()})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("forget the neighbour %s on %s: %w", ip, m.bridge, err)
	}
	return nil
}
