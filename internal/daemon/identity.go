package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
)

// applyIdentity writes the VM's identity onto its new disk before its
// first boot (hostname, machine-id, network, banger's key, its own SSH
// host key) and pins that host key by IP and by name. An image banger
// cannot personalise is left as is: SSH then trusts on first use.
func (s *Service) applyIdentity(ctx context.Context, v *model.VM, op *operation) error {
	const stage = StepGuestIdentity
	if s.cfg.ClientKey == "" {
		op.Note(stage, "no managed ssh key configured: identity not written")
		return nil
	}
	disk := s.layout.VM(v.ID).RootDisk()
	if ok, why := identity.CanApplyIdentity(ctx, disk, s.layout.TmpDir(), s.cfg.GuestUser); !ok {
		op.Note(stage, "not written ("+why+"): ssh will trust the guest's host key on first use")
		return nil
	}
	ip, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return fmt.Errorf("guest ip %q: %w", v.GuestIP, err)
	}
	keys, err := identity.NewHostKeys()
	if err != nil {
		return err
	}
	machineID, err := identity.NewMachineID()
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(network.MACFor(v.ID))
	if err != nil {
		return err
	}
	id := identity.Identity{
		Hostname: v.Name, MachineID: machineID, MAC: mac,
		Address: netip.PrefixFrom(ip, s.pool.Prefix().Bits()), Gateway: s.pool.Gateway(), DNS: s.cfg.GuestDNS,
		User: s.cfg.GuestUser, AuthorizedKey: s.cfg.ClientKey, HostKeys: keys,
	}
	if err := identity.ApplyIdentity(ctx, disk, s.layout.TmpDir(), id); err != nil {
		return err
	}
	pubs := keys.PublicKeys()
	if err := identity.Pin(s.layout.KnownHosts(), []string{v.GuestIP, v.Name}, pubs...); err != nil {
		return fmt.Errorf("pin host key: %w", err)
	}
	v.HostKey = string(ssh.MarshalAuthorizedKey(pubs[0]))
	v.HostKey = v.HostKey[:len(v.HostKey)-1] // no newline
	op.log.Info("identity written", "detail", fmt.Sprintf("hostname %s, %s via %s, host key %s pinned", v.Name, id.Address, id.Gateway, ssh.FingerprintSHA256(pubs[0])))
	return nil
}
