package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
)

// HostNetwork is what the service needs of the host's network (the
// network.Manager); nil in Config means VMs get no network device.
type HostNetwork interface {
	EnsureHost(ctx context.Context) error
	CreateTap(ctx context.Context, name string, owner int) error
	DeleteTap(ctx context.Context, name string) error
	RemoveOrphanTaps(ctx context.Context, owned func(name string) bool) ([]string, error)
	Publish(ctx context.Context, owner string, guestIP netip.Addr, p network.Publish) error
	Unpublish(ctx context.Context, owner string) error
	Published(ctx context.Context) ([]network.Published, error)
}

// capability is an optional per-VM feature: prepared as a start step while
// the VM starts, cleaned up by every teardown.
type capability interface {
	Name() string
	Enabled(v *model.VM) bool
	Prepare(ctx context.Context, v *model.VM) error
	// Cleanup is idempotent: it runs on every teardown, enabled or not.
	Cleanup(ctx context.Context, v *model.VM) error
}

// newCapabilities is the explicit list of capabilities the service has.
func newCapabilities(cfg Config) []capability {
	if cfg.Network == nil {
		return nil
	}
	return []capability{publishCapability{net: cfg.Network}}
}

// capabilitySteps are the start steps of v's enabled capabilities.
func (s *Service) capabilitySteps(v *model.VM) []Step {
	var steps []Step
	for _, c := range s.caps {
		if !c.Enabled(v) {
			continue
		}
		steps = append(steps, Step{
			Name: "cap." + c.Name(),
			Do:   func(ctx context.Context) error { return c.Prepare(ctx, v) },
			Undo: func(ctx context.Context) error { return c.Cleanup(ctx, v) },
		})
	}
	return steps
}

// cleanupCapabilities runs every capability's cleanup, returns their errors
// joined and warns naming each capability that failed.
func (s *Service) cleanupCapabilities(ctx context.Context, v *model.VM, op *operation) error {
	var errs []error
	for _, c := range s.caps {
		if err := c.Cleanup(ctx, v); err != nil {
			op.log.Warn("capability cleanup failed", append(vmAttrs(v), "capability", c.Name(), "error", err)...)
			errs = append(errs, fmt.Errorf("capability %s: %w", c.Name(), err))
		}
	}
	return errors.Join(errs...)
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
	for _, p := range v.Ports {
		if err := c.net.Publish(ctx, v.ID, ip, network.Publish{HostPort: p.HostPort, GuestPort: p.GuestPort, Proto: p.Proto}); err != nil {
			return errors.Join(err, c.net.Unpublish(ctx, v.ID))
		}
	}
	return nil
}

func (c publishCapability) Cleanup(ctx context.Context, v *model.VM) error {
	return c.net.Unpublish(ctx, v.ID)
}
