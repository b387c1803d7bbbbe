package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
)

// capability is an optional per-VM feature: a start step ("cap.<name>")
// while the VM starts, released by its teardown when Enabled.
type capability interface {
	Name() string
	Enabled(v *model.VM) bool
	Prepare(ctx context.Context, v *model.VM) error
	// Cleanup is idempotent: the rollback of Prepare and the teardown.
	Cleanup(ctx context.Context, v *model.VM) error
}

// newCapabilities is the explicit list of capabilities the service has.
func newCapabilities(cfg Config) []capability {
	if cfg.Network == nil {
		return nil
	}
	return []capability{publishCapability{net: cfg.Network}}
}

// publishCapability maps host ports to the guest while the VM runs.
type publishCapability struct{ net HostNetwork }

func (publishCapability) Name() string { return "publish" }

func (publishCapability) Enabled(v *model.VM) bool { return len(v.Ports) > 0 }

func (c publishCapability) Prepare(ctx context.Context, v *model.VM) error {
	ip, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return fmt.Errorf("guest ip %q: %w", v.GuestIP, err)
	}
	ps := make([]network.Publish, 0, len(v.Ports))
	for _, p := range v.Ports {
		ps = append(ps, network.Publish{HostPort: p.HostPort, GuestPort: p.GuestPort, Proto: p.Proto})
	}
	if err := c.net.PublishAll(ctx, v.ID, ip, ps); err != nil {
		return errors.Join(err, c.net.Unpublish(ctx, v.ID))
	}
	return nil
}

func (c publishCapability) Cleanup(ctx context.Context, v *model.VM) error {
	return c.net.Unpublish(ctx, v.ID)
}
