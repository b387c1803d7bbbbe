package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/netpolicy"
	"github.com/banger-vm/banger/internal/network"
)

// Network isolation: each running VM's rules in banger's tables (what its
// guest may reach, its pinned MAC and IP) exist exactly while it holds its
// tap. A tap without them passes nothing: the rules are applied by the
// start step StepNetworkPolicy, re-applied at startup to every running VM
// (VMs started by a banger without policies must keep working), and
// removed by its release or by the startup sweep.

// NetPolicyHost is what the service needs of the host network for the
// VMs' policies (the network.Manager).
type NetPolicyHost interface {
	ApplyVM(ctx context.Context, v network.VMNet) error
	RemoveVM(ctx context.Context, owner string) error
	RemoveOrphanVMs(ctx context.Context, owned func(owner string) bool) ([]string, error)
}

// ParseNetPolicy checks a policy as the user gave it and returns it in its
// canonical form (default egress filled in, rules and networks as
// netpolicy.ParsePolicy reads them back). Errors are InvalidArgument.
func ParseNetPolicy(p model.NetPolicy) (model.NetPolicy, error) {
	np, err := netpolicy.ParsePolicy(p.Egress, p.Allow, p.Deny, p.Networks)
	if err != nil {
		return model.NetPolicy{}, err
	}
	out := model.NetPolicy{Egress: np.Egress, Networks: np.Networks}
	for _, r := range np.Allow {
		out.Allow = append(out.Allow, r.String())
	}
	for _, r := range np.Deny {
		out.Deny = append(out.Deny, r.String())
	}
	return out, nil
}

// vmNet is what ApplyVM needs of v, whose tap is tap.
func vmNet(v *model.VM, tap string) (network.VMNet, error) {
	pol, err := netpolicy.ParsePolicy(v.NetPolicy.Egress, v.NetPolicy.Allow, v.NetPolicy.Deny, v.NetPolicy.Networks)
	if err != nil {
		return network.VMNet{}, fmt.Errorf("network policy of vm %q: %w", v.Name, err)
	}
	ip, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return network.VMNet{}, fmt.Errorf("guest ip of vm %q: %w", v.Name, err)
	}
	mac, err := net.ParseMAC(network.MACFor(v.ID))
	if err != nil {
		return network.VMNet{}, fmt.Errorf("mac of vm %q: %w", v.Name, err)
	}
	return network.VMNet{Owner: v.ID, Tap: tap, IP: ip, MAC: mac, Policy: pol}, nil
}

// netPolicyStep applies the VM's rules to its tap, before the VMM boots;
// its release removes them (and the VM's conntrack flows).
func (s *Service) netPolicyStep(sc *startCtx, nh NetPolicyHost) Step {
	return Step{Name: StepNetworkPolicy,
		Do: func(ctx context.Context) error {
			vn, err := vmNet(sc.v, sc.spec.Tap)
			if err != nil {
				return err
			}
			return nh.ApplyVM(ctx, vn)
		},
		Release: &Release{Held: func() bool { return sc.v.Runtime.Tap != "" },
			Do: func(ctx context.Context) error { return nh.RemoveVM(ctx, sc.v.ID) }}}
}

// netPolicyHost is the host network's policy side; nil when the daemon
// runs without a network.
func (s *Service) netPolicyHost() NetPolicyHost {
	if s.cfg.Network == nil {
		return nil
	}
	return s.cfg.Network
}

// reapplyNetPolicies gives every running VM its rules again (VMs started
// by a banger that had none get them here, or their taps would pass
// nothing) and removes the rules of VMs that hold no tap. Called at
// startup, after reconcile.
func (s *Service) reapplyNetPolicies(ctx context.Context, vms []*model.VM) {
	nh := s.netPolicyHost()
	if nh == nil {
		return
	}
	owned := map[string]bool{}
	for _, v := range vms {
		if v.Runtime.Tap == "" {
			continue
		}
		owned[v.ID] = true
		if v.State != model.StateRunning {
			continue // an error with its runtime kept: its teardown removes the rules
		}
		vn, err := vmNet(v, v.Runtime.Tap)
		if err == nil {
			err = nh.ApplyVM(ctx, vn)
		}
		if err != nil {
			s.log.Warn("could not apply the network policy of a running vm: its guest has no network", append(vmAttrs(v), "error", err)...)
		}
	}
	removed, err := nh.RemoveOrphanVMs(ctx, func(id string) bool { return owned[id] })
	if err != nil {
		s.log.Warn("could not remove network rules of vms that hold no tap", "error", err)
	}
	for _, id := range removed {
		s.log.Info("removed the network rules of a vm that holds no tap", "vm_id", id)
	}
}

// SetNetPolicy replaces the network policy of a stopped VM; it applies at
// its next start. A running VM is refused: its rules would no longer say
// what it was started with.
func (s *Service) SetNetPolicy(ctx context.Context, ref string, p model.NetPolicy) (*model.VM, error) {
	p, err := ParseNetPolicy(p)
	if err != nil {
		return nil, err
	}
	return s.runOp(ctx, ref, "vm.set-network", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		if v.State != model.StateStopped && (v.State != model.StateError || v.Runtime != (model.Runtime{})) {
			return errdefs.FailedPrecondition("vm %q is %s: its network policy can only change while it is stopped (hint: banger vm stop %s, then banger vm set %s ...)", v.Name, v.State, v.Name, v.Name)
		}
		old := v.NetPolicy
		v.NetPolicy = p
		if err := s.store.UpdateVM(ctx, v); err != nil {
			v.NetPolicy = old
			return err
		}
		op.Note(StageNetPolicySet, NetPolicySummary(p))
		return nil
	})
}

// NetPolicySummary is the one line `vm show` prints, e.g. "egress internet;
// allow 10.0.0.0/8:443/tcp; networks team" ("isolated" without networks).
func NetPolicySummary(p model.NetPolicy) string {
	np, err := netpolicy.ParsePolicy(p.Egress, p.Allow, p.Deny, p.Networks)
	if err != nil {
		return "invalid: " + err.Error()
	}
	return np.String()
}
