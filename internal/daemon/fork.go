package daemon

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/storage"
)

// Forks (issue 12). A fork is a new VM made from a snapshot: its own
// record, IP, MAC and name, and a root disk cloned from the snapshot's
// (vm create --from, vm fork, or vm create from an image with a warm
// snapshot of the VM's shape). Its first start launches the VMM restoring
// the snapshot instead of booting, and, before the VM is recorded
// running, the guest agent gives the guest the VM's identity: hostname,
// machine ID, IP and MAC, fresh SSH host keys (pinned from the agent's
// answer), the host's clock, and entropy. Until then the guest still has
// its template's IP and MAC, which the VM's anti-spoofing rules drop: it
// reaches nobody and nobody reaches it. Later starts boot the VM's own disk
// (the agent persisted the identity there, and the config disk carries
// the same, without host keys).

// Steps a fork adds to vm.create and vm.start.
const (
	StepOriginRecord = "vm.origin"        // create: the snapshot the VM comes from
	StepGuestResume  = "guest.reidentify" // start from a snapshot: the agent's identity, clock and entropy
	StageWarmStart   = "vm.warm-start"    // note: create found a warm snapshot
)

// agentRestoreWait bounds the wait for a restored guest's agent.
const agentRestoreWait = 60 * time.Second

// entropyBytes is what a restored guest's random pool gets from the host.
const entropyBytes = 256

// restorePlan is a start that restores a snapshot instead of booting.
type restorePlan struct {
	sn *model.Snapshot
	// fork: the guest is another VM's (the snapshot's source): it gets
	// this VM's identity. Otherwise (vm restore) it is this VM's own and
	// only gets the clock and entropy.
	fork bool
}

// resolveSnapshot resolves ref for the caller: another user's snapshot is
// refused; an image's warm snapshot is anyone's who may use the image.
func (s *Service) resolveSnapshot(ctx context.Context, ref string) (*model.Snapshot, error) {
	sn, err := s.store.ResolveSnapshot(ctx, ref)
	if err != nil {
		return nil, err
	}
	if mayAccess(ctx, sn.OwnerUID) {
		return sn, nil
	}
	if sn.Kind == model.SnapshotWarm {
		if img, err := s.store.ResolveImage(ctx, sn.ImageID); err == nil && checkImageAccess(ctx, img, true) == nil {
			return sn, nil
		}
	}
	uid, _ := callerUID(ctx)
	return nil, errdefs.PermissionDenied("snapshot %q belongs to another user (uid %d; you are uid %d): only its owner or root may see or use it", ref, sn.OwnerUID, uid)
}

// forkRequest checks that req may fork sn and fills in what a fork takes
// from its snapshot: image, driver, shape, disk strategy and size. An
// explicit value that differs is refused (a snapshot restores only into
// its own shape).
func (s *Service) forkRequest(ctx context.Context, req api.CreateVMRequest, sn *model.Snapshot) (api.CreateVMRequest, error) {
	differs := func(what string, asked, has any) error {
		return errdefs.InvalidArgument("snapshot %q was taken of a vm with %s %v; a fork has its snapshot's (you asked for %v) (hint: drop the option)", sn.Name, what, has, asked)
	}
	switch {
	case req.VCPUs != 0 && req.VCPUs != sn.VCPUs:
		return req, differs("vcpus", req.VCPUs, sn.VCPUs)
	case req.MemoryMiB != 0 && req.MemoryMiB != sn.MemoryMiB:
		return req, differs("memory MiB", req.MemoryMiB, sn.MemoryMiB)
	case req.VMM != "" && req.VMM != "auto" && req.VMM != sn.VMM:
		return req, differs("driver", req.VMM, sn.VMM)
	case req.Image != "" && req.Image != sn.ImageID:
		if img, err := s.store.ResolveImage(ctx, req.Image); err != nil || img.ID != sn.ImageID {
			return req, differs("image", req.Image, sn.ImageID)
		}
	}
	strategy, err := s.snapshotDiskStrategy(ctx, sn)
	if err != nil {
		return req, err
	}
	if req.DiskStrategy != "" && req.DiskStrategy != "auto" && req.DiskStrategy != strategy {
		return req, differs("disk strategy", req.DiskStrategy, strategy)
	}
	size := sn.DiskBytes
	if req.DiskBytes != 0 && size != 0 && req.DiskBytes != size {
		return req, differs("disk size (bytes)", req.DiskBytes, size)
	}
	if _, err := s.snapshotGuestIP(ctx, sn); err != nil {
		return req, err
	}
	img, err := s.store.ResolveImage(ctx, sn.ImageID)
	if err != nil {
		return req, fmt.Errorf("image of snapshot %q: %w", sn.Name, err)
	}
	if !hasAgent(img) {
		return req, errdefs.FailedPrecondition("snapshot %q: image %q has no banger-agent of protocol %d, which a fork needs to give the guest its own identity (hint: fork from a snapshot of a vm made from an image banger built)", sn.Name, img.Name, agent.ProtocolVersion)
	}
	req.VCPUs, req.MemoryMiB, req.VMM, req.Image = sn.VCPUs, sn.MemoryMiB, sn.VMM, sn.ImageID
	req.DiskStrategy, req.DiskBytes = strategy, size
	return req, nil
}

// snapshotDiskStrategy is the strategy of sn's disk clone: recorded, or
// for snapshots recorded before forks, read from the file (a qcow2
// overlay, or a raw file a fork copies by reflink or sparse copy).
func (s *Service) snapshotDiskStrategy(ctx context.Context, sn *model.Snapshot) (string, error) {
	if sn.DiskStrategy != "" {
		if sn.DiskStrategy == string(storage.KindDMSnapshot) {
			return "", errdefs.NotSupported("snapshot %q has a dm-snapshot disk, which cannot be forked yet (hint: fork from a vm with a file disk: qcow2, reflink or sparse-copy)", sn.Name)
		}
		return sn.DiskStrategy, nil
	}
	f, err := os.Open(filepath.Join(sn.Dir, SnapshotDiskFile))
	if err != nil {
		return "", errdefs.FailedPrecondition("snapshot %q has no disk clone: %v (hint: delete it)", sn.Name, err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0); err == nil && bytes.Equal(magic, []byte("QFI\xfb")) {
		return string(storage.KindQCOW2), nil
	}
	return string(storage.KindSparseCopy), nil
}

// snapshotGuestIP is the IP sn's guest wakes with: recorded, or for
// snapshots recorded before forks, its source VM's if it still exists.
func (s *Service) snapshotGuestIP(ctx context.Context, sn *model.Snapshot) (netip.Addr, error) {
	ip := sn.GuestIP
	if ip == "" {
		if v, err := s.store.GetVM(ctx, sn.VMID); err == nil {
			ip = v.GuestIP
		}
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return a, errdefs.FailedPrecondition("snapshot %q does not record its guest's address and its vm %q is gone (hint: take a new snapshot to fork from)", sn.Name, sn.VMName)
	}
	return a, nil
}

// cloneSnapshotDisk is a fork's disk.create: v's disk is a clone of sn's
// (reflink where the filesystem shares blocks, else a sparse copy; a qcow2
// clone is a small overlay over the image).
func (s *Service) cloneSnapshotDisk(ctx context.Context, v *model.VM, sn *model.Snapshot) error {
	if err := os.MkdirAll(v.VMDir, 0o700); err != nil {
		return fmt.Errorf("make vm dir: %w", err)
	}
	if err := cloneFile(ctx, filepath.Join(sn.Dir, SnapshotDiskFile), s.diskPath(v)); err != nil {
		return errors.Join(fmt.Errorf("clone the disk of snapshot %q: %w", sn.Name, err), removeAllIn(s.layout.VMsDir(), v.VMDir))
	}
	return nil
}

// forkIdentity is the identity a fork's guest gets: the same facts the
// config disk carries, without host keys (the agent makes them).
func (s *Service) forkIdentity(v *model.VM, machineID string) (identity.Identity, error) {
	ip, err := netip.ParseAddr(v.GuestIP)
	if err != nil {
		return identity.Identity{}, fmt.Errorf("guest ip %q: %w", v.GuestIP, err)
	}
	mac, err := net.ParseMAC(network.MACFor(v.ID))
	if err != nil {
		return identity.Identity{}, err
	}
	return identity.Identity{
		Hostname: v.Name, MachineID: machineID, MAC: mac,
		Address: netip.PrefixFrom(ip, s.pool.Prefix().Bits()), Gateway: s.pool.Gateway(), DNS: s.cfg.GuestDNS,
		User: s.cfg.GuestUser, AuthorizedKey: s.cfg.ClientKey, HostKeysFromAgent: true,
	}, nil
}

// writeAgentConfigDisk writes v's config disk for a fork: the VMM attaches
// it as it did for the snapshot's VM (the devices must match), and a later
// cold boot of the VM applies it. It holds no host keys: the agent makes
// the guest's, and the boot keeps them.
func (s *Service) writeAgentConfigDisk(ctx context.Context, v *model.VM, machineID string) error {
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	if !appliesConfigDisk(img) {
		return nil
	}
	facts, err := s.imageFacts(ctx, img)
	if err != nil {
		return err
	}
	id, err := s.forkIdentity(v, machineID)
	if err != nil {
		return err
	}
	return identity.WriteConfigDisk(s.configDiskPath(v), id, facts)
}

// forkCreateIdentity is a fork's guest.identity at create: the config disk
// (no pins yet: the host keys come from the agent at the first start).
func (s *Service) forkCreateIdentity(ctx context.Context, v *model.VM, op *operation) error {
	if s.cfg.ClientKey == "" {
		op.Note(StepGuestIdentity, "no managed ssh key configured: identity not written")
		return nil
	}
	mid, err := identity.NewMachineID()
	if err != nil {
		return err
	}
	if err := s.writeAgentConfigDisk(ctx, v, mid); err != nil {
		return err
	}
	op.Note(StepGuestIdentity, "a fork: the agent gives the guest its identity and host keys at its first start")
	return nil
}

// resumeGuest is guest.reidentify: once a restored guest runs, its agent
// adds entropy (reseeding the kernel's CRNG) and sets the clock; for a
// fork it then gives the guest this VM's identity and pins the host keys
// it answers with. A restored
// guest whose image has no agent is noted and left as it is (vm restore of
// an imported image).
func (s *Service) resumeGuest(ctx context.Context, sc *startCtx, op *operation) error {
	v := sc.v
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	if !hasAgent(img) {
		if sc.restore.fork {
			return errdefs.FailedPrecondition("image %q has no banger-agent of protocol %d: a fork cannot take its identity", img.Name, agent.ProtocolVersion)
		}
		op.Note(StepGuestResume, "the image has no banger-agent: the guest's clock is the snapshot's until it corrects it")
		return nil
	}
	began := time.Now()
	c, err := s.connectAgent(ctx, v, agentRestoreWait)
	if err != nil {
		return err
	}
	connected := time.Now()
	// Entropy first: every guest restored from one snapshot wakes with the
	// same kernel random state, and the host keys made next must differ.
	// The agent adds the bytes and has the kernel reseed its CRNG at once.
	seed := make([]byte, entropyBytes)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	if err := c.AddEntropy(ctx, seed); err != nil {
		return err
	}
	if err := c.SetClock(ctx, time.Now()); err != nil {
		return err
	}
	detail := "entropy added (crng reseeded), clock set"
	if sc.restore.fork {
		keys, err := s.reidentify(ctx, c, v, sc.restore.sn)
		if err != nil {
			return err
		}
		op.log.Info("restored guest given its identity", "agent_connect_ms", connected.Sub(began).Milliseconds(), "identity_ms", time.Since(connected).Milliseconds())
		detail = fmt.Sprintf("%s; hostname %s, %s, host key %s pinned", detail, v.Name, v.GuestIP, ssh.FingerprintSHA256(keys[0]))
	}
	op.Note(StepGuestResume, detail)
	return nil
}

// reidentify gives the restored guest of sn (the template's) v's identity
// through its agent; its NIC still has the template's MAC.
func (s *Service) reidentify(ctx context.Context, c *agent.Client, v *model.VM, sn *model.Snapshot) ([]ssh.PublicKey, error) {
	from, err := s.snapshotGuestIP(ctx, sn)
	if err != nil {
		return nil, err
	}
	keys, err := s.setGuestIdentity(ctx, c, v, network.MACFor(sn.VMID))
	if err != nil {
		return nil, fmt.Errorf("give the guest (restored with %s's address %s) the identity of vm %q: %w", sn.VMName, from, v.Name, err)
	}
	return keys, nil
}

// setGuestIdentity has v's running guest take v's identity through its
// agent c: hostname, a new machine ID, v's address and MAC on the NIC that
// has nicMAC now, DNS, and new SSH host keys, which it pins by v's IP and
// name (replacing what those named); the config disk is rewritten to
// match, so a later boot keeps all of it.
func (s *Service) setGuestIdentity(ctx context.Context, c *agent.Client, v *model.VM, nicMAC string) ([]ssh.PublicKey, error) {
	mid, err := identity.NewMachineID()
	if err != nil {
		return nil, err
	}
	id, err := s.forkIdentity(v, mid)
	if err != nil {
		return nil, err
	}
	req := agent.Identity{Hostname: v.Name, MachineID: mid, DNS: id.DNS, NewHostKeys: true}
	if s.cfg.Network != nil { // the guest has a NIC
		req.Network = &agent.NetworkIdentity{MAC: nicMAC, Address: id.Address, Gateway: id.Gateway}
		if mac := id.MAC.String(); mac != nicMAC {
			req.Network.NewMAC = mac
		}
	}
	keys, err := c.SetIdentity(ctx, req) // an answer without keys is an error
	if err != nil {
		return nil, err
	}
	if err := identity.Pin(s.layout.KnownHosts(), []string{v.GuestIP, v.Name}, keys...); err != nil {
		return nil, fmt.Errorf("pin host key: %w", err)
	}
	v.HostKey = hostKeyLine(keys[0])
	if err := s.writeAgentConfigDisk(ctx, v, mid); err != nil {
		return nil, err
	}
	return keys, nil
}

// hasAgent reports whether img carries a banger-agent this daemon speaks
// to.
func hasAgent(img *model.Image) bool {
	a := ImageAgent(img)
	return a != nil && a.Protocol == agent.ProtocolVersion
}

// pendingRestore is the restore v's next start does: its origin's
// snapshot while the origin is pending; nil for a boot.
func (s *Service) pendingRestore(ctx context.Context, v *model.VM) (*restorePlan, error) {
	o, err := s.store.Origin(ctx, v.ID)
	if err != nil || o == nil || !o.Pending {
		return nil, err
	}
	sn, err := s.store.ResolveSnapshot(ctx, o.SnapshotID)
	if err != nil {
		return nil, errdefs.FailedPrecondition("vm %q is a fork of snapshot %q, which is gone: it cannot start (hint: delete it and fork again)", v.Name, o.SnapshotName)
	}
	return &restorePlan{sn: sn, fork: true}, nil
}

// ForkVM snapshots a running (or paused) VM and starts a new VM, name,
// from that instant with its own identity and its source's network policy
// (published ports are not copied: a host port has one owner). The snapshot is kept under
// req.Snapshot if given; otherwise it is deleted once the fork runs.
func (s *Service) ForkVM(ctx context.Context, ref string, req api.ForkVMRequest) (*model.VM, error) {
	if err := ValidateName("vm", req.Name); err != nil {
		return nil, err
	}
	if _, err := s.store.ResolveVM(ctx, req.Name); err == nil {
		return nil, errdefs.AlreadyExists("vm %q already exists (hint: pick another name for the fork)", req.Name)
	}
	src, err := s.resolveVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	img, err := s.store.ResolveImage(ctx, src.ImageID)
	if err != nil {
		return nil, fmt.Errorf("image of vm %q: %w", src.Name, err)
	}
	if !hasAgent(img) {
		return nil, errdefs.FailedPrecondition("vm %q: image %q has no banger-agent of protocol %d, which a fork needs to give the guest its own identity (hint: fork a vm made from an image banger built)", src.Name, img.Name, agent.ProtocolVersion)
	}
	sn, err := s.CreateSnapshot(ctx, src.ID, SnapshotOptions{Name: req.Snapshot})
	if err != nil {
		return nil, err
	}
	// The fork is on the same networks, with the same policy, as its source.
	np := src.NetPolicy
	v, err := s.CreateVM(ctx, api.CreateVMRequest{Name: req.Name, From: sn.ID, Start: true,
		Network: api.NetworkPolicy{Egress: np.Egress, Allow: np.Allow, Deny: np.Deny, Networks: np.Networks}})
	if req.Snapshot == "" {
		// The fork's disk is its own copy: the snapshot is not needed once
		// it runs, or if no fork was made. A fork made but not started
		// keeps it (its restore is still pending), and says so.
		pending, perr := s.store.VMsPendingRestore(context.WithoutCancel(ctx), sn.ID)
		if perr == nil && len(pending) == 0 {
			if derr := s.DeleteSnapshot(context.WithoutCancel(ctx), sn.ID); derr != nil {
				s.log.Warn("could not delete the fork's temporary snapshot", "snapshot", sn.Name, "error", derr)
			}
		} else if err != nil {
			err = fmt.Errorf("%w (snapshot %q is kept for it)", err, sn.Name)
		}
	}
	return v, err
}

// WarmImage boots the image once in a VM of the request's shape, waits
// until the guest has finished booting, snapshots it and deletes the VM:
// vm create of that image and shape then restores the snapshot instead of
// booting. An older warm snapshot of the same shape is replaced.
func (s *Service) WarmImage(ctx context.Context, ref string, req api.WarmImageRequest) (*model.Snapshot, error) {
	img, err := s.store.ResolveImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := checkImageAccess(ctx, img, false); err != nil {
		return nil, err
	}
	if !hasAgent(img) {
		return nil, errdefs.FailedPrecondition("image %q has no banger-agent of protocol %d, which warm starts need to give each VM its identity (hint: warm an image banger built)", img.Name, agent.ProtocolVersion)
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, err
	}
	tmpl := fmt.Sprintf("warm-%x", suffix)
	v, err := s.CreateVM(ctx, api.CreateVMRequest{Name: tmpl, Image: img.ID, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, VMM: req.VMM, Cold: true})
	if err != nil {
		return nil, fmt.Errorf("warm image %q: %w", img.Name, err)
	}
	defer s.discardTemplate(ctx, v.ID)
	// Its RAM in a file, where the driver can: the snapshot keeps that
	// file instead of a copy, and each warm start maps it.
	v, err = s.runOp(ctx, v.ID, "vm.start", !detached, func(ctx context.Context, v *model.VM, op *operation) error {
		_, err := s.startWith(ctx, v, op, startOptions{memoryFile: true})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("warm image %q: %w", img.Name, err)
	}
	old, err := s.store.WarmSnapshot(ctx, img.ID, v.VMM, v.VCPUs, v.MemoryMiB)
	if err != nil {
		return nil, err
	}
	if err := s.prepareTemplate(ctx, v); err != nil {
		return nil, fmt.Errorf("warm image %q: %w", img.Name, err)
	}
	name := defaultName("warm-"+img.Name, fmt.Sprintf("-%s-%dc-%dm-%s", v.VMM, v.VCPUs, v.MemoryMiB, time.Now().UTC().Format(snapshotNameTimeFmt)))
	sn, err := s.CreateSnapshot(ctx, v.ID, SnapshotOptions{Name: name, Stop: true, Kind: model.SnapshotWarm})
	if err != nil {
		return nil, fmt.Errorf("warm image %q: %w", img.Name, err)
	}
	if old != nil {
		if err := s.DeleteSnapshot(ctx, old.ID); err != nil {
			s.log.Warn("could not delete the replaced warm snapshot", "snapshot", old.Name, "error", err)
		}
	}
	s.log.Info("image warmed", "image", img.Name, "snapshot", sn.Name, "size_bytes", sn.SizeBytes)
	return sn, nil
}

// discardTemplate deletes a warm image's template VM, whatever state it is in.
func (s *Service) discardTemplate(ctx context.Context, ref string) {
	if err := s.DeleteVM(context.WithoutCancel(ctx), ref); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		s.log.Warn("could not delete a warm image's template vm", "vm", ref, "error", err)
	}
}

// bootWait bounds the wait for a template guest to finish booting.
const bootWait = 5 * time.Minute

// prepareTemplate makes a warm image's template ready for its snapshot:
// it waits until the guest has finished booting (systemd's
// is-system-running --wait, through the agent), so the snapshot has every
// service up, sshd included; has the guest's networkd let go of its link
// (releaseNetwork); and drops the daemon's agent connection, so forks
// start with an agent waiting for a new host.
func (s *Service) prepareTemplate(ctx context.Context, v *model.VM) error {
	ctx, cancel := context.WithTimeout(ctx, bootWait)
	defer cancel()
	c, err := s.connectAgent(ctx, v, bootWait)
	if err != nil {
		return err
	}
	run := func(argv ...string) (guestResult, error) {
		var out, errOut bytes.Buffer
		st, err := c.Exec(ctx, agent.ExecOptions{Argv: argv, Stdout: &out, Stderr: &errOut})
		return guestResult{code: st.Code, stdout: strings.TrimSpace(out.String()), stderr: strings.TrimSpace(errOut.String())}, err
	}
	// "degraded" (a unit failed) still means booting is over.
	r, err := run("systemctl", "is-system-running", "--wait")
	if err != nil {
		return err
	}
	if r.stdout != "running" && r.stdout != "degraded" {
		return fmt.Errorf("the guest did not finish booting: systemd says %q (exit %d)", r.stdout, r.code)
	}
	if err := releaseNetwork(run); err != nil {
		// Forks still work: their agent waits for networkd instead.
		s.log.Warn("the template's systemd-networkd keeps its link: warm starts will wait for it to let go", "vm", v.Name, "error", err)
	}
	s.agents.drop(v.ID)
	return nil
}

// guestResult is how a command run in the guest through its agent ended.
type guestResult struct {
	code           int
	stdout, stderr string
}

// networkdReleaseWait bounds the wait for a template's systemd-networkd to
// let go of its link.
const networkdReleaseWait = 10 * time.Second

// releaseNetwork has a template guest's systemd-networkd let go of its
// link before the snapshot, running commands in the guest with run: its
// .network file is removed and networkd restarted (networkctl needs
// D-Bus, which banger's images do not have), which leaves the link
// unmanaged with its address (networkd does not undo what it configured
// on a link it no longer manages). A fork's agent then changes the MAC and
// address with no networkd reacting, instead of waiting for networkd to
// notice the new MAC and drop what it had configured (100-200 ms of a warm
// start under TCG). The fork's agent writes its own .network file, which
// later boots use. An image without banger's .network file has nothing to
// release.
func releaseNetwork(run func(argv ...string) (guestResult, error)) error {
	must := func(argv ...string) (string, error) {
		r, err := run(argv...)
		if err == nil && r.code != 0 {
			err = fmt.Errorf("%s: exit %d: %s", strings.Join(argv, " "), r.code, r.stderr)
		}
		return r.stdout, err
	}
	if r, err := run("test", "-e", identity.NetworkFile); err != nil || r.code != 0 {
		return err // nil: not configured by banger through networkd
	}
	if _, err := must("rm", "-f", identity.NetworkFile); err != nil {
		return err
	}
	if _, err := must("systemctl", "restart", "systemd-networkd.service"); err != nil {
		return err
	}
	deadline := time.Now().Add(networkdReleaseWait)
	for {
		out, err := must("grep", "-rh", "^ADMIN_STATE=", agent.NetworkdLinks)
		if err == nil && allUnmanaged(out) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("networkd still manages a link %s after its restart: %q: %w", networkdReleaseWait, out, cmp.Or(err, errors.New("a link is not unmanaged")))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// allUnmanaged reports whether none of the ADMIN_STATE lines of networkd's
// link state files (one per line) says networkd manages the link.
func allUnmanaged(states string) bool {
	for _, l := range strings.Split(strings.TrimSpace(states), "\n") {
		if agent.ManagedByNetworkd([]byte(strings.TrimSpace(l))) {
			return false
		}
	}
	return true
}

// originStep is a fork's vm.origin: the snapshot it comes from, pending
// until its first start has restored it.
func (s *Service) originStep(cc *createCtx) Step {
	return Step{Name: StepOriginRecord,
		Do: func(ctx context.Context) error {
			return s.store.InsertOrigin(ctx, &model.Origin{VMID: cc.v.ID, SnapshotID: cc.from.ID, SnapshotName: cc.from.Name, Warm: cc.warm, Pending: true})
		},
		Detail: func() string { return fmt.Sprintf("snapshot %q (%s), warm %v", cc.from.Name, cc.from.ID, cc.warm) }}
}

// warmSnapshotFor is the warm snapshot a create of v (as newVM made it
// from req) restores instead of booting: its image's, of its driver and
// shape, with the same disk size and a strategy req allows; nil if none.
func (s *Service) warmSnapshotFor(ctx context.Context, req api.CreateVMRequest, v *model.VM) (*model.Snapshot, error) {
	sn, err := s.store.WarmSnapshot(ctx, v.ImageID, v.VMM, v.VCPUs, v.MemoryMiB)
	if err != nil || sn == nil {
		return nil, err
	}
	if sn.DiskBytes != v.DiskBytes || (req.DiskStrategy != "" && req.DiskStrategy != "auto" && req.DiskStrategy != sn.DiskStrategy) {
		return nil, nil
	}
	if _, err := s.forkRequest(ctx, api.CreateVMRequest{}, sn); err != nil {
		s.log.Warn("a warm snapshot cannot be used: booting", "snapshot", sn.Name, "error", err)
		return nil, nil
	}
	return sn, nil
}

// defaultName is prefix+suffix, with prefix cut short (and of trailing
// hyphens) so that the whole is a valid name's length.
func defaultName(prefix, suffix string) string {
	if over := len(prefix) + len(suffix) - maxNameLen; over > 0 {
		prefix = strings.TrimRight(prefix[:max(len(prefix)-over, 1)], "-")
	}
	return prefix + suffix
}
