package daemon

import (
	"context"
	"net/netip"

	"github.com/banger-vm/banger/internal/network"
)

// HostNetwork is what the service needs of the host's network (the
// network.Manager); nil in Config means VMs get no network device.
type HostNetwork interface {
	EnsureHost(ctx context.Context) error
	CreateTap(ctx context.Context, name string, owner int) error
	DeleteTap(ctx context.Context, name string) error
	// ForgetNeighbour drops the host's ARP entry for an address that
	// changed hands (a VM's start, a move to a new address).
	ForgetNeighbour(ip netip.Addr) error
	RemoveOrphanTaps(ctx context.Context, owned func(name string) bool) ([]string, error)
	Publish(ctx context.Context, owner string, guestIP netip.Addr, p network.Publish) error
	// PublishAll publishes every port in one batch (issue 9).
	PublishAll(ctx context.Context, owner string, guestIP netip.Addr, ps []network.Publish) error
	Unpublish(ctx context.Context, owner string) error
	Published(ctx context.Context) ([]network.Published, error)
	// Each running VM's rules (netpolicy.go).
	NetPolicyHost
}
