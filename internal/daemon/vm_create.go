package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
)

// maxDiskBytes is a sanity bound on a VM's disk (sparse, but still).
const maxDiskBytes = 2 << 40

// CreateVM validates req, records the VM, makes its writable root disk and
// leaves it stopped; with req.Start it starts it too.
func (s *Service) CreateVM(ctx context.Context, req api.CreateVMRequest) (*model.VM, error) {
	if req.VCPUs == 0 {
		req.VCPUs = DefaultVCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = DefaultMemoryMiB
	}
	if req.Image == "" {
		req.Image = DefaultImage
	}
	if err := s.validateCreate(req); err != nil {
		return nil, err
	}
	ports, err := s.parsePorts(ctx, req.Publish)
	if err != nil {
		return nil, err
	}
	img, err := s.store.ResolveImage(ctx, req.Image)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) && req.Image == DefaultImage {
			return nil, errdefs.NotFound("the default image %q does not exist (hint: banger image build, or pass --image)", DefaultImage)
		}
		return nil, err
	}
	disk := req.DiskBytes
	if disk == 0 {
		disk = img.RootfsBytes
	}
	if disk < img.RootfsBytes {
		return nil, errdefs.InvalidArgument("disk size %d bytes is smaller than image %q's root filesystem (%d bytes)", disk, img.Name, img.RootfsBytes)
	}
	kind, reason, err := s.ChooseVMM(ctx, req.VMM)
	if err != nil {
		return nil, err
	}
	v := &model.VM{ID: system.NewID(), Name: req.Name, ImageID: img.ID, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		DiskBytes: disk, VMM: kind, VMMReason: reason, Ports: ports, State: model.StateCreating}
	dir := s.layout.VM(v.ID)
	v.VMDir, v.LogPath = dir.Path(), dir.LogPath()
	unlock, err := s.insertNewVM(ctx, v)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The driver's checks need the VM's derived names and address.
	if err := s.validateForDriver(ctx, v, img); err != nil {
		s.discardCreate(ctx, v)
		return nil, err
	}

	op := s.begin(ctx, "vm.create", v)
	op.Note(StageVMMChoose, v.VMM+": "+v.VMMReason)
	if err := s.makeDisk(ctx, v, img, op); err != nil {
		s.discardCreate(ctx, v)
		return nil, op.finish(fmt.Errorf("create vm %q: %w", v.Name, err))
	}
	if err := s.applyIdentity(ctx, v, op); err != nil {
		s.discardCreate(ctx, v)
		return nil, op.finish(fmt.Errorf("create vm %q: %w", v.Name, err))
	}
	v.State = model.StateStopped
	if err := s.store.UpdateVM(context.WithoutCancel(ctx), v); err != nil {
		s.discardCreate(ctx, v)
		return nil, op.finish(fmt.Errorf("create vm %q: %w", v.Name, err))
	}
	op.finish(nil)
	if !req.Start {
		return v, nil
	}
	sop := s.begin(ctx, "vm.start", v)
	v, err = s.startLocked(ctx, v, sop)
	return v, sop.finish(err)
}

func (s *Service) validateCreate(req api.CreateVMRequest) error {
	if err := ValidateName("vm", req.Name); err != nil {
		return err
	}
	if req.VCPUs < 1 || req.VCPUs > MaxVCPUs {
		return errdefs.InvalidArgument("vcpus %d is out of range (hint: 1 to %d)", req.VCPUs, MaxVCPUs)
	}
	hostMiB := system.MemTotalMiB()
	if req.MemoryMiB < MinMemoryMiB || (hostMiB > 0 && req.MemoryMiB > hostMiB) {
		return errdefs.InvalidArgument("memory %d MiB is out of range (hint: %d MiB to this host's %d MiB)", req.MemoryMiB, MinMemoryMiB, hostMiB)
	}
	if req.DiskBytes < 0 || req.DiskBytes > maxDiskBytes {
		return errdefs.InvalidArgument("disk size %d bytes is out of range (hint: up to 2 TiB)", req.DiskBytes)
	}
	return nil
}

// insertNewVM makes sure the VM's ID has a short form no other VM has,
// allocates its guest IP, takes its lock and records it.
func (s *Service) insertNewVM(ctx context.Context, v *model.VM) (func(), error) {
	var unlock func()
	err := s.store.Transaction(ctx, func(tx *store.Tx) error {
		for {
			taken, err := tx.ShortIDTaken(ctx, v.Short())
			if err != nil {
				return err
			}
			if !taken {
				break
			}
			v.ID = system.NewID()
		}
		used, err := tx.UsedGuestIPs(ctx)
		if err != nil {
			return err
		}
		ip, err := s.pool.Allocate(used)
		if err != nil {
			return err
		}
		v.GuestIP = ip.String()
		dir := s.layout.VM(v.ID)
		v.VMDir, v.LogPath = dir.Path(), dir.LogPath()
		// Nobody can know the new id yet, so this cannot block.
		if unlock, err = s.locks.lock(ctx, v.ID); err != nil {
			return err
		}
		return tx.InsertVM(ctx, v)
	})
	if err != nil {
		if unlock != nil {
			unlock()
		}
		return nil, err
	}
	return unlock, nil
}

func (s *Service) makeDisk(ctx context.Context, v *model.VM, img *model.Image, op *operation) error {
	if err := os.MkdirAll(v.VMDir, 0o700); err != nil {
		return fmt.Errorf("make vm dir: %w", err)
	}
	disk := s.layout.VM(v.ID).RootDisk()
	if err := s.cfg.Storage.Create(ctx, img.RootfsPath, disk, v.DiskBytes); err != nil {
		op.Stage(StageDiskCreate, "failed", err.Error())
		return err
	}
	op.Stage(StageDiskCreate, "done", fmt.Sprintf("%s, %d bytes, %s", disk, v.DiskBytes, s.cfg.Storage.Name()))
	return nil
}

// discardCreate undoes a failed create: the dir and disk, then the record.
func (s *Service) discardCreate(ctx context.Context, v *model.VM) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if err := removeAllIn(s.layout.VMsDir(), v.VMDir); err != nil {
		s.log.Warn("could not remove the dir of a failed create", append(vmAttrs(v), "error", err)...)
	}
	if err := s.store.DeleteVM(ctx, v.ID); err != nil {
		s.log.Warn("could not remove the record of a failed create", append(vmAttrs(v), "error", err)...)
	}
	if err := identity.RemovePins(s.layout.KnownHosts(), v.GuestIP, v.Name); err != nil {
		s.log.Warn("could not remove the host-key pins of a failed create", append(vmAttrs(v), "error", err)...)
	}
}

func isUnder(parent, p string) bool {
	rel, err := filepath.Rel(parent, p)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..") && !filepath.IsAbs(rel)
}
