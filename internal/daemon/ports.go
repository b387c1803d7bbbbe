package daemon

import (
	"context"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/store"
)

// MaxPortsPerVM bounds the ports one VM publishes: all are added in one
// nftables batch at start, and removed in one at stop.
const MaxPortsPerVM = 64

// parsePorts turns --publish specs into port mappings, refusing duplicates
// and more than MaxPortsPerVM. Host ports other VMs publish are refused by
// portConflict, in the transaction that records the VM.
func (s *Service) parsePorts(ctx context.Context, specs []string) ([]model.PortMapping, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	if len(specs) > MaxPortsPerVM {
		return nil, errdefs.InvalidArgument("%d ports to publish, over the limit of %d per vm (hint: publish a range of services behind one port, or split them across vms)", len(specs), MaxPortsPerVM)
	}
	if s.cfg.Network == nil {
		return nil, errdefs.NotSupported("port publishing needs the daemon's host network, which is not configured")
	}
	type key struct {
		port  uint16
		proto string
	}
	seen := map[key]bool{}
	var out []model.PortMapping
	for _, spec := range specs {
		p, err := network.ParsePublish(spec)
		if err != nil {
			return nil, err
		}
		k := key{p.HostPort, p.Proto}
		if seen[k] {
			return nil, errdefs.InvalidArgument("host port %d/%s is published twice", p.HostPort, p.Proto)
		}
		seen[k] = true
		out = append(out, model.PortMapping{HostPort: p.HostPort, GuestPort: p.GuestPort, Proto: p.Proto})
	}
	return out, nil
}

// portConflict refuses a new VM publishing a host port another VM
// publishes. It runs in the transaction that inserts the VM (write
// transactions are serialized), so of two creates racing for a port
// exactly one records it.
func portConflict(ctx context.Context, tx *store.Tx, nv *model.VM) error {
	if len(nv.Ports) == 0 {
		return nil
	}
	type key struct {
		port  uint16
		proto string
	}
	want := map[key]bool{}
	for _, p := range nv.Ports {
		want[key{p.HostPort, p.Proto}] = true
	}
	vms, err := tx.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, v := range vms {
		for _, p := range v.Ports {
			if want[key{p.HostPort, p.Proto}] {
				return errdefs.Conflict("host port %d/%s is already published by vm %q (hint: choose another host port)", p.HostPort, p.Proto, v.Name)
			}
		}
	}
	return nil
}
