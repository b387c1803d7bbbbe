package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/storage"
)

// Root disks (issue 11). Each VM's disk is made by one storage backend,
// chosen at create (choseDisk) and recorded on the VM (DiskStrategy,
// DiskReason): qcow2, reflink, dm-snapshot or sparse-copy, over the image's
// root file, which stays read-only (0444, never opened writable by a VMM).
// The backend makes the disk (disk.create), attaches it at start
// (disk.attach: the path and format the VMM opens; its release detaches at
// teardown), and removes it at delete (disk.remove).

// diskState is what the service knows of the host's storage: probed once.
type diskState struct {
	once sync.Once
	host storage.Host
	// rawIdentity caches, per image id, whether banger writes the image's
	// identity with debugfs (raw disks only): images are immutable.
	rawIdentity sync.Map
	// facts caches, per image id, identity.ImageFacts (configdisk.go).
	facts sync.Map
}

// diskHost probes the host's storage on first use (at daemon start) and
// returns what it found ever after.
func (s *Service) diskHost(ctx context.Context) storage.Host {
	s.disk.once.Do(func() {
		s.disk.host = storage.Probe(ctx, s.layout.VMsDir())
	})
	return s.disk.host
}

// storageOptions are what every backend is made with.
func (s *Service) storageOptions() storage.Options {
	return storage.Options{Log: s.log, CacheDir: filepath.Join(s.layout.CacheDir(), "disks")}
}

// diskKind is v's recorded strategy; VMs recorded before strategies were
// chosen have a sparse copy.
func diskKind(v *model.VM) storage.Kind {
	if v.DiskStrategy == "" {
		return storage.KindSparseCopy
	}
	return storage.Kind(v.DiskStrategy)
}

// diskPath is v's own disk file in its directory.
func (s *Service) diskPath(v *model.VM) string {
	return filepath.Join(s.layout.VM(v.ID).Path(), storage.FileName(diskKind(v)))
}

// diskFormat is how the VMM reads v's disk.
func diskFormat(v *model.VM) string {
	if diskKind(v) == storage.KindQCOW2 {
		return string(storage.FormatQCOW2)
	}
	return string(storage.FormatRaw)
}

// dmNameFor is the dm device v holds while it runs, recorded in its
// runtime before the host is touched; empty for strategies with none.
func dmNameFor(v *model.VM) string {
	if diskKind(v) != storage.KindDMSnapshot {
		return ""
	}
	return layout.DMName(v.Short())
}

// diskOf is v's disk for its backend; img may be nil (then Image is empty:
// Detach and Remove do not need it).
func (s *Service) diskOf(v *model.VM, img *model.Image) storage.Disk {
	d := storage.Disk{VMID: v.ID, Path: s.diskPath(v), Size: v.DiskBytes}
	if img != nil {
		d.Image = img.RootfsPath
	}
	return d
}

func (s *Service) backendOf(v *model.VM) (storage.Backend, error) {
	if s.cfg.DiskBackend != nil {
		return s.cfg.DiskBackend(diskKind(v), s.storageOptions())
	}
	return storage.New(diskKind(v), s.storageOptions())
}

// identityNeedsRaw reports whether img takes the VM's identity only by
// debugfs onto a raw disk at create: then auto keeps to raw strategies
// (reflink, sparse-copy) so host keys stay pinned before the first boot.
func (s *Service) identityNeedsRaw(ctx context.Context, img *model.Image) bool {
	if s.cfg.ClientKey == "" || appliesConfigDisk(img) {
		return false
	}
	if ok, found := s.disk.rawIdentity.Load(img.ID); found {
		return ok.(bool)
	}
	ok, _ := identity.CanApplyIdentity(ctx, img.RootfsPath, s.layout.TmpDir(), s.cfg.GuestUser)
	s.disk.rawIdentity.Store(img.ID, ok)
	return ok
}

// rawAtCreate reports whether strategy k leaves a raw ext4 file at create
// that debugfs can write the identity onto.
func rawAtCreate(k storage.Kind) bool {
	return k == storage.KindReflink || k == storage.KindSparseCopy
}

// chooseDisk resolves a create's --disk-strategy (empty: the daemon's
// default) for a VM of driver vmmKind over img with a disk of diskBytes.
// A strategy that cannot run here is refused with the reason, before
// anything is made.
func (s *Service) chooseDisk(ctx context.Context, want, vmmKind string, img *model.Image, diskBytes int64) (storage.Kind, string, error) {
	if want == "" {
		want = s.cfg.DiskStrategy
	}
	k, err := storage.ParseKind(want)
	if err != nil {
		return "", "", err
	}
	d, err := s.driver(vmmKind)
	if err != nil {
		return "", "", err
	}
	need := storage.Need{VMM: vmmKind, QCOW2: s.probes.get(ctx, d).Features.QCOW2, Grow: diskBytes > img.RootfsBytes}
	h := s.diskHost(ctx)
	if k == storage.KindAuto && s.identityNeedsRaw(ctx, img) {
		const why = "image %q takes its identity (host key, network) only on a raw disk at create"
		h.QemuImg, h.QemuImgWhy = false, fmt.Sprintf(why, img.Name)
		h.DM, h.DMWhy = false, fmt.Sprintf(why, img.Name)
	}
	kind, reason, err := storage.Choose(k, need, h)
	if err != nil {
		return "", "", fmt.Errorf("vm disk: %w", err)
	}
	return kind, reason, nil
}

// createDisk makes v's disk in its new directory; on error it leaves
// nothing (no undo runs for a failed step).
func (s *Service) createDisk(ctx context.Context, v *model.VM, img *model.Image) error {
	if err := os.MkdirAll(v.VMDir, 0o700); err != nil {
		return fmt.Errorf("make vm dir: %w", err)
	}
	b, err := s.backendOf(v)
	if err == nil {
		err = b.Create(ctx, s.diskOf(v, img))
	}
	if err != nil {
		return errors.Join(err, removeAllIn(s.layout.VMsDir(), v.VMDir))
	}
	return nil
}

// diskCreateDetail is the journal's disk.create detail: the strategy and why.
func diskCreateDetail(v *model.VM) string {
	return v.DiskStrategy + ": " + v.DiskReason
}

// diskAttachStep is disk.attach: the backend sets up what the VMM opens
// (a dm device for dm-snapshot; the file itself otherwise) and the spec
// gets its path and format. The release detaches; it is held while the
// recorded runtime names a dm device.
func (s *Service) diskAttachStep(sc *startCtx) Step {
	return Step{Name: StepDiskAttach,
		Do: func(ctx context.Context) error {
			b, err := s.backendOf(sc.v)
			if err != nil {
				return err
			}
			img, err := s.store.ResolveImage(ctx, sc.v.ImageID)
			if err != nil {
				return fmt.Errorf("image of vm %q: %w", sc.v.Name, err)
			}
			a, err := b.Attach(ctx, s.diskOf(sc.v, img))
			if err != nil {
				return err
			}
			sc.spec.RootDisk, sc.spec.RootDiskFormat = a.Path, string(a.Format)
			return nil
		},
		Release: &Release{Held: func() bool { return sc.v.Runtime.DMName != "" },
			Do: func(ctx context.Context) error { return s.detachDisk(ctx, sc.v) }}}
}

func (s *Service) detachDisk(ctx context.Context, v *model.VM) error {
	b, err := s.backendOf(v)
	if err != nil {
		return err
	}
	return b.Detach(ctx, s.diskOf(v, nil))
}

// removeDisk is disk.remove: the backend detaches and deletes v's disk.
func (s *Service) removeDisk(ctx context.Context, v *model.VM) error {
	b, err := s.backendOf(v)
	if err != nil {
		return err
	}
	return b.Remove(ctx, s.diskOf(v, nil))
}

// cloneDisk makes dst a disk of v's backend holding v's disk content at
// this instant (for snapshots and forks): v must be stopped or paused. dst
// then serves as the Path of a disk of the same strategy over v's image.
func (s *Service) cloneDisk(ctx context.Context, v *model.VM, dst string) error {
	b, err := s.backendOf(v)
	if err != nil {
		return err
	}
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	return b.Clone(ctx, s.diskOf(v, img), dst)
}

// imageFileMode is the mode of every file of an image: nobody writes it.
const imageFileMode = 0o444

// sealImageDir makes every regular file in dir read-only (0444): an image
// is immutable once imported or built.
func sealImageDir(dir string) error {
	return filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if fi.Mode().Perm() == imageFileMode {
			return nil
		}
		return os.Chmod(p, imageFileMode)
	})
}

// sealImages makes the files of every recorded image read-only (images
// imported before they were sealed); a stat per file when already done.
func (s *Service) sealImages(ctx context.Context) {
	ims, err := s.store.ListImages(ctx)
	if err != nil {
		s.log.Warn("could not list images to make them read-only", "error", err)
		return
	}
	for _, im := range ims {
		if err := sealImageDir(s.layout.Image(im.ID).Path()); err != nil {
			s.log.Warn("could not make an image read-only", "image", im.Name, "error", err)
		}
	}
}

// removeDiskOrphans removes the storage objects (dm and loop devices, grow
// mounts, grown layers) no VM owns: what a crash or a failed delete left.
// It runs at startup, before reconcile, when no create, start or stop is
// in flight; the devices of owned VMs are left for reconcile (Attach is
// idempotent).
func (s *Service) removeDiskOrphans(ctx context.Context) error {
	refs, err := s.store.ListVMRefs(ctx)
	if err != nil {
		return err
	}
	owned := make([]string, 0, len(refs))
	for _, r := range refs {
		owned = append(owned, r.ID)
	}
	o := s.storageOptions()
	orphans, err := storage.FindOrphans(ctx, o, storage.Scope{VMsDir: s.layout.VMsDir(), ImagesDir: s.layout.ImagesDir(), CacheDir: o.CacheDir}, owned)
	if len(orphans) > 0 {
		err = errors.Join(err, storage.RemoveOrphans(ctx, o, orphans))
	}
	return err
}

// DiskOffers lists, for doctor, each disk strategy this host offers a VM of
// driver kind, and why not the others.
func (s *Service) DiskOffers(ctx context.Context, kind string) ([]storage.Offer, error) {
	d, err := s.driver(kind)
	if err != nil {
		return nil, err
	}
	return storage.Report(storage.Need{VMM: kind, QCOW2: s.probes.get(ctx, d).Features.QCOW2}, s.diskHost(ctx)), nil
}

// checkDiskStrategy validates the daemon's --disk-strategy.
func checkDiskStrategy(want string) (string, error) {
	k, err := storage.ParseKind(want)
	if err != nil {
		return "", errdefs.InvalidArgument("--disk-strategy: %w", err)
	}
	return string(k), nil
}

// importRootfs copies an imported root filesystem into the image's
// directory (a sparse copy, grown to size).
func importRootfs(ctx context.Context, src, dst string, size int64) error {
	b, err := storage.New(storage.KindSparseCopy, storage.Options{})
	if err != nil {
		return err
	}
	return b.Create(ctx, storage.Disk{Image: src, Path: dst, Size: size})
}
