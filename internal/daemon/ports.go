package daemon

import (
	"context"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
)

// parsePorts turns --publish specs into port mappings, refusing duplicates
// and host ports another VM publishes.
func (s *Service) parsePorts(ctx context.Context, specs []string) ([]model.PortMapping, error) {
	if len(specs) == 0 {
		return nil, nil
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
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	for _, v := range vms {
		for _, p := range v.Ports {
			if seen[key{p.HostPort, p.Proto}] {
				return nil, errdefs.Conflict("host port %d/%s is already published by vm %q", p.HostPort, p.Proto, v.Name)
			}
		}
	}
	return out, nil
}
