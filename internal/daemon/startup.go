package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
)

// Startup is PrepareHost then Recover, in the caller: what a daemon has
// done before it serves VM requests. The daemon itself calls PrepareHost,
// serves, and recovers in the background (Begin).
func (s *Service) Startup(ctx context.Context) error {
	if err := s.PrepareHost(ctx); err != nil {
		return err
	}
	return s.Recover(ctx)
}

// PrepareHost sets up the host network. A daemon that cannot is refused
// before it serves.
func (s *Service) PrepareHost(ctx context.Context) error {
	if s.cfg.Network != nil {
		if err := s.cfg.Network.EnsureHost(ctx); err != nil {
			return fmt.Errorf("set up the host network: %w", err)
		}
	}
	return nil
}

// Recover brings the records and the host in line after a daemon start:
// temporary files of interrupted imports and builds removed, storage
// objects no VM owns removed, every VM that claims a runtime reconciled
// with its process (operations a crash cut short closed as interrupted),
// leftovers of deleted VMs and snapshots removed, published ports, network
// rules and taps no running VM owns removed. Stopped VMs are read only by
// narrow queries (ids, names, IPs, dirs).
func (s *Service) Recover(ctx context.Context) error {
	s.removeTemporaries()
	s.sealImages(ctx)
	s.log.Info("disk strategies", "host", s.diskHost(ctx), "default", s.cfg.DiskStrategy)
	if err := s.removeDiskOrphans(ctx); err != nil {
		s.log.Warn("could not remove storage objects no vm owns", "error", err)
	}
	if err := s.Reconcile(ctx); err != nil {
		s.log.Warn("reconcile left errors", "error", err)
	}
	if err := s.removeOrphans(ctx); err != nil {
		s.log.Warn("could not look for leftovers of deleted vms", "error", err)
	}
	if err := s.removeOrphanSnapshotDirs(ctx); err != nil {
		s.log.Warn("could not remove leftovers of unfinished snapshots", "error", err)
	}
	if s.cfg.Network != nil {
		// Only a VM that claims a runtime holds a tap or rules (a stopped
		// one's runtime is cleared by its teardown).
		vms, err := s.store.ListVMsClaimingRuntime(ctx)
		if err != nil {
			return err
		}
		owned, running := map[string]bool{}, map[string]bool{}
		for _, v := range vms {
			if v.Runtime.Tap != "" {
				owned[v.Runtime.Tap] = true
			}
			if v.State == model.StateRunning || v.State == model.StatePaused {
				running[v.ID] = true
			}
		}
		s.removeStalePublishes(ctx, running)
		s.reapplyNetPolicies(ctx, vms)
		removed, err := s.cfg.Network.RemoveOrphanTaps(ctx, func(name string) bool { return owned[name] })
		if err != nil {
			s.log.Warn("could not remove orphan taps", "error", err)
		}
		for _, t := range removed {
			s.log.Info("removed a tap no vm owns", "tap", t)
		}
	}
	return nil
}

// removeOrphans removes what a delete that failed half-way left of a VM
// whose record is gone: its directory and its host-key pins. It reads
// each record's id, name, guest IP and dir only.
func (s *Service) removeOrphans(ctx context.Context) error {
	refs, err := s.store.ListVMRefs(ctx)
	if err != nil {
		return err
	}
	known := make(map[string]bool, 3*len(refs))
	for _, r := range refs {
		known[r.ID], known[r.Name] = true, true
		if r.GuestIP != "" {
			known[r.GuestIP] = true
		}
		if r.VMDir != "" && filepath.Dir(r.VMDir) == s.layout.VMsDir() {
			known[filepath.Base(r.VMDir)] = true // a dir the record names is never an orphan's
		}
	}
	entries, err := os.ReadDir(s.layout.VMsDir())
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, e := range entries {
		if known[e.Name()] {
			continue
		}
		dir := filepath.Join(s.layout.VMsDir(), e.Name())
		if err := removeAllIn(s.layout.VMsDir(), dir); err != nil {
			s.log.Warn("could not remove the dir of a deleted vm", "dir", dir, "error", err)
		} else {
			s.log.Info("removed the dir of a deleted vm", "dir", dir)
		}
	}
	hosts, err := identity.PinnedHosts(s.layout.KnownHosts())
	if err != nil {
		return err
	}
	var stale []string
	for _, h := range hosts {
		if !known[h] {
			stale = append(stale, h)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	s.log.Info("removing host-key pins of deleted vms", "hosts", strings.Join(stale, ","))
	return identity.RemovePins(s.layout.KnownHosts(), stale...)
}

// removeStalePublishes drops published ports whose VM no longer runs (a
// daemon that died between a VM's exit and its cleanup).
func (s *Service) removeStalePublishes(ctx context.Context, running map[string]bool) {
	pubs, err := s.cfg.Network.Published(ctx)
	if err != nil {
		s.log.Warn("could not list published ports", "error", err)
		return
	}
	done := map[string]bool{}
	for _, p := range pubs {
		if running[p.Owner] || done[p.Owner] {
			continue
		}
		done[p.Owner] = true
		if err := s.cfg.Network.Unpublish(ctx, p.Owner); err != nil {
			s.log.Warn("could not remove a stale published port", "owner", p.Owner, "port", p.String(), "error", err)
		} else {
			s.log.Info("removed published ports of a vm that is not running", "owner", p.Owner)
		}
	}
}

// removeTemporaries deletes what an interrupted import or build left: the
// dot-named temporary image dirs and everything in the tmp dir. (Builds run
// their mounts in a private mount namespace, gone with the process.)
func (s *Service) removeTemporaries() {
	var leftovers []string
	for _, dir := range []string{s.layout.ImagesDir(), s.layout.TmpDir()} {
		entries, err := os.ReadDir(dir)
		if err != nil && !os.IsNotExist(err) {
			s.log.Warn("could not list a dir for leftovers", "dir", dir, "error", err)
		}
		for _, e := range entries {
			// In the images dir only the dot-named temporaries; all of tmp.
			if dir == s.layout.TmpDir() || strings.HasPrefix(e.Name(), ".") {
				leftovers = append(leftovers, filepath.Join(dir, e.Name()))
			}
		}
	}
	for _, p := range leftovers {
		if err := os.RemoveAll(p); err != nil {
			s.log.Warn("could not remove a leftover temporary dir", "dir", p, "error", err)
		} else {
			s.log.Info("removed a leftover temporary dir", "dir", p)
		}
	}
}

// SSHTarget returns a running VM and the account banger logs in as.
func (s *Service) SSHTarget(ctx context.Context, ref string) (*model.VM, string, error) {
	v, err := s.resolveVM(ctx, ref)
	if err != nil {
		return nil, "", err
	}
	if err := s.notRunning(v); err != nil {
		return nil, "", err
	}
	if v.GuestIP == "" || s.cfg.Network == nil {
		return nil, "", errdefs.NotSupported("vm %q has no network: the daemon runs without a host network", v.Name)
	}
	return v, s.cfg.GuestUser, nil
}

// notRunning says why v cannot be reached (paused, stopped with how its
// VMM ended, or a VMM gone), or nil when it runs.
func (s *Service) notRunning(v *model.VM) error {
	switch {
	case v.State == model.StatePaused:
		return errdefs.FailedPrecondition("vm %q is paused (hint: banger vm resume %s)", v.Name, v.Name)
	case v.State != model.StateRunning && v.LastExit != nil:
		return errdefs.FailedPrecondition("vm %q is %s (vmm %s) (hint: banger vm start %s)", v.Name, v.State, v.LastExit.Reason(), v.Name)
	case v.State != model.StateRunning:
		return errdefs.FailedPrecondition("vm %q is %s, not running (hint: banger vm start %s)", v.Name, v.State, v.Name)
	case !s.alive(v):
		return errdefs.FailedPrecondition("vm %q is not running: its vmm process %d exited (hint: banger vm start %s)", v.Name, v.Runtime.PID, v.Name)
	}
	return nil
}
