package daemon

import (
	"context"
	"errors"
	"fmt"
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

// createCtx is what the create steps act on.
type createCtx struct {
	v      *model.VM
	img    *model.Image
	unlock func() // the new VM's lock, taken with its record
	// from, if set, is the snapshot the VM is forked from (vm create
	// --from, vm fork, or a warm image: warm).
	from *model.Snapshot
	warm bool
}

// buildCreateSteps is vm.create, in order; a failure undoes the steps done,
// in reverse, and reconcile discards a create a crash cut short with the
// same undos (UndoSteps). A fork (cc.from) clones its snapshot's disk,
// writes its config disk without host keys (the agent makes them at its
// first start) and records its origin.
func (s *Service) buildCreateSteps(op *operation, cc *createCtx) []Step {
	v := cc.v
	disk := func(ctx context.Context) error { return s.createDisk(ctx, v, cc.img) }
	ident := func(ctx context.Context) error { return s.applyIdentity(ctx, v, op) }
	if cc.from != nil {
		disk = func(ctx context.Context) error { return s.cloneSnapshotDisk(ctx, v, cc.from) }
		ident = func(ctx context.Context) error { return s.forkCreateIdentity(ctx, v, op) }
	}
	steps := []Step{
		{Name: StepRecord,
			Do: func(ctx context.Context) error {
				unlock, err := s.insertNewVM(ctx, v)
				if err != nil {
					return err
				}
				cc.unlock = unlock
				op.open(ctx) // the journal needs the record
				return nil
			},
			Undo: func(ctx context.Context) error { return s.store.DeleteVM(ctx, v.ID) }},
		// The driver's checks need the VM's derived names and address.
		{Name: StepVMMValidate, Do: func(ctx context.Context) error { return s.validateForDriver(ctx, v, cc.img) }},
		{Name: StepDiskCreate,
			Do:     disk,
			Detail: func() string { return diskCreateDetail(v) },
			Undo:   func(context.Context) error { return removeAllIn(s.layout.VMsDir(), v.VMDir) }},
		{Name: StepGuestIdentity,
			Do:   ident,
			Undo: func(context.Context) error { return identity.RemovePins(s.layout.KnownHosts(), v.GuestIP, v.Name) }},
	}
	if cc.from != nil {
		// The origin row goes with the VM's record (ON DELETE CASCADE).
		steps = append(steps, s.originStep(cc))
	}
	return append(steps, Step{Name: StepRecordStopped, Do: func(ctx context.Context) error {
		v.State = model.StateStopped
		return s.store.UpdateVM(ctx, v)
	}})
}

// CreateVM validates req, records the VM, makes its writable root disk and
// leaves it stopped; with req.Start it starts it too.
func (s *Service) CreateVM(ctx context.Context, req api.CreateVMRequest) (*model.VM, error) {
	var from *model.Snapshot
	if req.From != "" {
		sn, err := s.resolveSnapshot(ctx, req.From)
		if err != nil {
			return nil, err
		}
		if req, err = s.forkRequest(ctx, req, sn); err != nil {
			return nil, err
		}
		from = sn
	}
	v, img, err := s.newVM(ctx, req)
	if err != nil {
		return nil, err
	}
	warm := false
	if from == nil && !req.Cold {
		if from, err = s.warmSnapshotFor(ctx, req, v); err != nil {
			return nil, err
		}
		warm = from != nil
	}
	if from != nil {
		v.DiskStrategy = from.DiskStrategy
		v.DiskReason = fmt.Sprintf("a clone of snapshot %q's disk, which is %s", from.Name, from.DiskStrategy)
	}
	op := s.newOperation("vm.create", v)
	op.Note(StageVMMChoose, v.VMM+": "+v.VMMReason)
	if warm {
		op.Note(StageWarmStart, fmt.Sprintf("image %q has warm snapshot %q of this shape: the vm's first start restores it (hint: --cold boots instead)", img.Name, from.Name))
	}
	cc := &createCtx{v: v, img: img, from: from, warm: warm}
	defer func() {
		if cc.unlock != nil {
			cc.unlock()
		}
	}()
	if err := RunSteps(ctx, s.buildCreateSteps(op, cc), op); err != nil {
		return nil, op.finish(fmt.Errorf("create vm %q: %w", v.Name, err))
	}
	_ = op.finish(nil) // returns its argument
	if !req.Start {
		return v, nil
	}
	sop := s.begin(ctx, "vm.start", v)
	v, err = s.startLocked(ctx, v, sop)
	return v, sop.finish(err)
}

// newVM validates a create request and returns the VM it describes (not
// yet recorded) and its image.
func (s *Service) newVM(ctx context.Context, req api.CreateVMRequest) (*model.VM, *model.Image, error) {
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
		return nil, nil, err
	}
	ports, err := s.parsePorts(ctx, req.Publish)
	if err != nil {
		return nil, nil, err
	}
	if err := checkPortsAllowed(ctx, ports); err != nil {
		return nil, nil, err
	}
	netPolicy, err := ParseNetPolicy(model.NetPolicy{Egress: req.Network.Egress, Allow: req.Network.Allow, Deny: req.Network.Deny, Networks: req.Network.Networks})
	if err != nil {
		return nil, nil, err
	}
	img, err := s.store.ResolveImage(ctx, req.Image)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) && req.Image == DefaultImage {
			return nil, nil, errdefs.NotFound("the default image %q does not exist (hint: banger image build, or pass --image)", DefaultImage)
		}
		return nil, nil, err
	}
	if err := checkImageAccess(ctx, img, true); err != nil {
		return nil, nil, err
	}
	disk := req.DiskBytes
	if disk == 0 {
		disk = img.RootfsBytes
	}
	if disk < img.RootfsBytes {
		return nil, nil, errdefs.InvalidArgument("disk size %d bytes is smaller than image %q's root filesystem (%d bytes)", disk, img.Name, img.RootfsBytes)
	}
	kind, reason, err := s.ChooseVMM(ctx, req.VMM)
	if err != nil {
		return nil, nil, err
	}
	diskKind, diskReason, err := s.chooseDisk(ctx, req.DiskStrategy, kind, img, disk)
	if err != nil {
		return nil, nil, err
	}
	v := &model.VM{ID: system.NewID(), Name: req.Name, ImageID: img.ID, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		DiskBytes: disk, VMM: kind, VMMReason: reason, Ports: ports, State: model.StateCreating,
		DiskStrategy: string(diskKind), DiskReason: diskReason, OwnerUID: ownerUID(ctx)}
	v.NetPolicy = netPolicy
	dir := s.layout.VM(v.ID)
	v.VMDir, v.LogPath = dir.Path(), dir.LogPath()
	return v, img, nil
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

// validateForDriver runs the chosen driver's own checks on the VM as it
// would start, so a spec the driver cannot run is refused at create.
func (s *Service) validateForDriver(ctx context.Context, v *model.VM, img *model.Image) error {
	d, err := s.driver(v.VMM)
	if err != nil {
		return err
	}
	spec, err := s.startSpec(v, img, "")
	if err != nil {
		return err
	}
	if spec.Kernel, err = kernelFor(s.probes.get(ctx, d), img); err != nil {
		return err
	}
	return d.Validate(spec)
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
		if err := portConflict(ctx, tx, v); err != nil {
			return err
		}
		ip, err := s.leaseIP(ctx, tx)
		if err != nil {
			return err
		}
		v.GuestIP = ip
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

func isUnder(parent, p string) bool {
	rel, err := filepath.Rel(parent, p)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..") && !filepath.IsAbs(rel)
}

// leaseIP picks a guest IP no VM holds, inside tx: the caller records it
// in the same transaction.
func (s *Service) leaseIP(ctx context.Context, tx *store.Tx) (string, error) {
	used, err := tx.UsedGuestIPs(ctx)
	if err != nil {
		return "", err
	}
	ip, err := s.pool.Allocate(used)
	if err != nil {
		return "", err
	}
	return ip.String(), nil
}
