package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/store"
)

// Run-time identity (issue 10): a running VM's guest gets new SSH host
// keys and a new machine ID through its agent, and with NewIP a new
// address: banger pins the keys the agent answers with (the old pins go),
// moves the VM's firewall rules and published ports to the new address,
// and rewrites the VM's config disk so a later boot keeps all of it.

// Stages of vm.reidentify.
const (
	StepIPLease       = "ip.lease"
	StepGuestIdentify = "guest.identity-agent"
	StepNetworkMove   = "network.move"
)

// ReidentifyOptions tune vm reidentify.
type ReidentifyOptions struct {
	NewIP bool // lease a new guest IP and move the guest to it
}

// ReidentifyVM gives a running VM's guest a new identity at run time.
func (s *Service) ReidentifyVM(ctx context.Context, ref string, opts ReidentifyOptions) (*model.VM, error) {
	return s.runOp(ctx, ref, "vm.reidentify", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		if !s.alive(v) || v.State != model.StateRunning {
			return errdefs.FailedPrecondition("vm %q is %s: only a running vm's guest can be given a new identity (hint: banger vm start %s)", v.Name, v.State, v.Name)
		}
		img, err := s.store.ResolveImage(ctx, v.ImageID)
		if err != nil {
			return fmt.Errorf("image of vm %q: %w", v.Name, err)
		}
		if !hasAgent(img) {
			return errdefs.NotSupported("vm %q: image %q has no banger-agent of protocol %d, which a run-time identity needs (hint: images banger builds have it)", v.Name, img.Name, agent.ProtocolVersion)
		}
		c, err := s.connectAgent(ctx, v, agentMinWait)
		if err != nil {
			return err
		}
		if opts.NewIP && s.cfg.Network == nil {
			return errdefs.FailedPrecondition("the daemon runs without a network (--no-network): vm %q has no address to change", v.Name)
		}
		oldIP := v.GuestIP
		newIP := oldIP
		steps := []Step{}
		if opts.NewIP {
			steps = append(steps, Step{Name: StepIPLease,
				Do: func(ctx context.Context) error {
					return s.store.Transaction(ctx, func(tx *store.Tx) error {
						ip, err := s.leaseIP(ctx, tx)
						if err != nil {
							return err
						}
						newIP, v.GuestIP = ip, ip
						return tx.UpdateVM(ctx, v)
					})
				},
				Undo: func(ctx context.Context) error {
					v.GuestIP = oldIP
					return s.store.UpdateVM(ctx, v)
				},
				Detail: func() string { return oldIP + " -> " + newIP }})
		}
		var keys []ssh.PublicKey
		steps = append(steps, Step{Name: StepGuestIdentify,
			Do: func(ctx context.Context) error {
				var err error
				if keys, err = s.setGuestIdentity(ctx, c, v, network.MACFor(v.ID)); err != nil {
					return err
				}
				// The old address's pins go with the old keys (the name's
				// were replaced).
				if oldIP != v.GuestIP {
					if err := identity.RemovePins(s.layout.KnownHosts(), oldIP); err != nil {
						return err
					}
				}
				return s.store.UpdateVM(ctx, v)
			},
			Detail: func() string { return "host key " + ssh.FingerprintSHA256(keys[0]) + " pinned" }})
		if opts.NewIP {
			steps = append(steps, Step{Name: StepNetworkMove, Do: func(ctx context.Context) error { return s.moveNetwork(ctx, v) }})
		}
		if err := RunSteps(ctx, steps, op); err != nil {
			return fmt.Errorf("reidentify vm %q: %w", v.Name, err)
		}
		op.log.Info("identity renewed", "guest_ip", v.GuestIP, "at", time.Now().UTC())
		return nil
	})
}

// moveNetwork gives a running VM's rules and published ports its record's
// (new) address.
func (s *Service) moveNetwork(ctx context.Context, v *model.VM) error {
	if s.cfg.Network != nil {
		if ip, err := netip.ParseAddr(v.GuestIP); err == nil {
			if err := s.cfg.Network.ForgetNeighbour(ip); err != nil {
				return err
			}
		}
	}
	if nh := s.netPolicyHost(); nh != nil && v.Runtime.Tap != "" {
		vn, err := vmNet(v, v.Runtime.Tap)
		if err != nil {
			return err
		}
		if err := nh.ApplyVM(ctx, vn); err != nil {
			return err
		}
	}
	for _, c := range s.caps {
		if !c.Enabled(v) {
			continue
		}
		if err := c.Cleanup(ctx, v); err != nil {
			return err
		}
		if err := c.Prepare(ctx, v); err != nil {
			return err
		}
	}
	return nil
}

// hostKeyLine is k in authorized_keys form, without the newline.
func hostKeyLine(k ssh.PublicKey) string {
	b := ssh.MarshalAuthorizedKey(k)
	return string(b[:len(b)-1])
}
