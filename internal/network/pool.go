// Package network owns banger's host networking: the guest address pool,
// the bridge, per-VM taps and the nftables table banger owns.
package network

import (
	"encoding/hex"
	"fmt"
	"net/netip"

	"github.com/banger-vm/banger/errdefs"
)

// DefaultCIDR is the guest network; the gateway is its first address.
const DefaultCIDR = "172.30.0.0/24"

// Pool hands out guest addresses from an IPv4 prefix: the first host
// address is the gateway (on the bridge), the rest are for guests.
type Pool struct {
	prefix netip.Prefix
}

// NewPool parses cidr and rejects prefixes with no room for a guest.
func NewPool(cidr string) (Pool, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return Pool{}, errdefs.InvalidArgument("guest network %q is not a CIDR prefix (hint: e.g. %s)", cidr, DefaultCIDR)
	}
	if !p.Addr().Is4() {
		return Pool{}, errdefs.InvalidArgument("guest network %q is not IPv4", cidr)
	}
	p = p.Masked()
	if p.Bits() > 29 {
		return Pool{}, errdefs.InvalidArgument("guest network %q has no room for guests: a /%d leaves %d guest addresses (hint: use /29 or larger, e.g. %s)", cidr, p.Bits(), max(0, (1<<(32-p.Bits()))-3), DefaultCIDR)
	}
	return Pool{prefix: p}, nil
}

func (p Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway is the host's address on the guest network.
func (p Pool) Gateway() netip.Addr { return p.prefix.Addr().Next() }

// Size is the number of guest addresses.
func (p Pool) Size() int { return (1 << (32 - p.prefix.Bits())) - 3 }

// Allocate returns the lowest guest address not in used.
func (p Pool) Allocate(used []string) (netip.Addr, error) {
	taken := make(map[netip.Addr]bool, len(used))
	for _, u := range used {
		if a, err := netip.ParseAddr(u); err == nil {
			taken[a] = true
		}
	}
	for a := p.Gateway().Next(); p.prefix.Contains(a); a = a.Next() {
		if !p.prefix.Contains(a.Next()) {
			break // broadcast address
		}
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, errdefs.FailedPrecondition("guest network %s is exhausted: all %d addresses are leased (hint: delete unused vms, or configure a larger --guest-cidr)", p.prefix, p.Size())
}

// CIDFor derives a VM's vsock CID from its guest address: the address as a
// 32-bit number. Guest addresses are unique, so CIDs are too, and no
// private IPv4 address maps below 3 (the reserved CIDs).
func CIDFor(ip string) (uint32, error) {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("guest ip %q is not an IPv4 address", ip)
	}
	b := a.As4()
	cid := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	if cid < 3 || cid == 0xffffffff {
		return 0, fmt.Errorf("guest ip %s gives reserved vsock cid %d", ip, cid)
	}
	return cid, nil
}

// MACFor derives a stable, locally administered unicast MAC from a VM ID
// (its first four bytes of hex).
func MACFor(id string) string {
	var b [4]byte
	if len(id) >= 8 {
		_, _ = hex.Decode(b[:], []byte(id[:8])) // ids are hex; a bad one gives zeros, still a valid MAC
	}
	return fmt.Sprintf("06:fc:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}
