package network

// What a guest reaches (banger's network isolation):
//
//   - The host: nothing. Every packet from the bridge to any of the host's
//     own addresses is dropped (input chain), published ports included,
//     except replies to connections the host opened (ssh from the daemon).
//     banger serves nothing to guests: no DHCP, and the DNS resolvers are
//     written into the guest (Config.GuestDNS).
//   - Other guests: only those sharing a named network (Policy.Networks),
//     any port, both ways. Bridge ports are isolated (IFLA_BRPORT_ISOLATED),
//     the host answers ARP for every guest (proxy_arp_pvlan) and routes
//     guest to guest traffic through its forward chain, so it is filtered
//     the same with or without br_netfilter. Default: no network, isolated.
//   - Elsewhere, by Policy.Egress: "internet" (default) is public IPv4
//     only (not ReservedRanges: RFC 1918, CGNAT, link-local and its cloud
//     metadata services, loopback, multicast...), plus the guest resolvers
//     on port 53; "none" is nothing. Deny rules come first, then allow
//     rules (which may open a reserved range, never the host or a guest).
//   - Its identity is pinned: frames from a VM's tap must carry its MAC,
//     and its IPv4 address in IPv4 and ARP; nothing else (IPv6, VLAN tags,
//     other ethertypes) passes. A port of the bridge with no VM's rules
//     passes nothing.
//
// A policy itself (its types, parsing and checks) is package netpolicy's,
// which the CLI uses without linking nftables; this package turns it into
// rules (vmrules.go).
