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
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	// Banger's images apply a config disk at boot (every strategy); the
	// others take debugfs writes on a raw disk only.
	var facts identity.ImageFacts
	viaConfigDisk := appliesConfigDisk(img)
	disk := s.diskPath(v)
	switch {
	case viaConfigDisk:
		if facts, err = s.imageFacts(ctx, img); err != nil {
			op.Note(stage, "not written ("+err.Error()+"): ssh will trust the guest's host key on first use")
			return nil
		}
	case !rawAtCreate(diskKind(v)):
		op.Note(stage, "not written (the image's initramfs applies no config disk, and a "+v.DiskStrategy+" disk is no raw file debugfs can write at create): ssh will trust the guest's host key on first use")
		return nil
	default:
		if ok, why := identity.CanApplyIdentity(ctx, disk, s.layout.TmpDir(), s.cfg.GuestUser); !ok {
			op.Note(stage, "not written ("+why+"): ssh will trust the guest's host key on first use")
			return nil
		}
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
	how := "config disk"
	if viaConfigDisk {
		err = identity.WriteConfigDisk(s.configDiskPath(v), id, facts)
	} else {
		how, err = "debugfs", identity.ApplyIdentity(ctx, disk, s.layout.TmpDir(), id)
	}
	if err != nil {
		return err
	}
	pubs := keys.PublicKeys()
	if err := identity.Pin(s.layout.KnownHosts(), []string{v.GuestIP, v.Name}, pubs...); err != nil {
		return fmt.Errorf("pin host key: %w", err)
	}
	v.HostKey = hostKeyLine(pubs[0])
	op.log.Info("identity written", "by", how, "detail", fmt.Sprintf("hostname %s, %s via %s, host key %s pinned", v.Name, id.Address, id.Gateway, ssh.FingerprintSHA256(pubs[0])))
	return nil
}
