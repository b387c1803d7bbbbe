package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
)

// ImportImage validates the given files, copies them into the state dir and
// records the image. On any failure nothing is recorded and nothing is left.
func (s *Service) ImportImage(ctx context.Context, req api.ImportImageRequest) (*model.Image, error) {
	if err := ValidateName("image", req.Name); err != nil {
		return nil, err
	}
	for what, p := range map[string]string{"kernel": req.Kernel, "rootfs": req.Rootfs, "initrd": req.Initrd} {
		if p != "" && !filepath.IsAbs(p) {
			return nil, errdefs.InvalidArgument("%s path %q is not absolute", what, p)
		}
	}
	if req.Kernel == "" || req.Rootfs == "" {
		return nil, errdefs.InvalidArgument("an image needs a kernel and a rootfs (hint: --kernel FILE --rootfs FILE)")
	}
	if _, err := s.store.ResolveImage(ctx, req.Name); err == nil {
		return nil, errdefs.AlreadyExists("image %q already exists (hint: pick another name, or delete it first)", req.Name)
	}
	if err := image.CheckKernel(req.Kernel); err != nil {
		return nil, errdefs.InvalidArgument("%w", err)
	}
	if req.Initrd != "" {
		if err := image.CheckInitrd(req.Initrd); err != nil {
			return nil, errdefs.InvalidArgument("%w", err)
		}
	}
	size, err := image.CheckExt4(req.Rootfs)
	if err != nil {
		return nil, errdefs.InvalidArgument("%w", err)
	}

	im := &model.Image{ID: system.NewID(), Name: req.Name, RootfsBytes: size, Cmdline: req.Cmdline, OwnerUID: ownerUID(ctx)}
	dir := s.layout.Image(im.ID)
	im.KernelPath, im.RootfsPath = dir.Kernel(), dir.Rootfs()
	if image.IsELF(req.Kernel) {
		// An ELF vmlinux serves QEMU (PVH entry) and Firecracker alike.
		im.KernelPath = dir.Vmlinux()
		im.VmlinuxPath = im.KernelPath
	}
	if req.Initrd != "" {
		im.InitrdPath = dir.Initrd()
	}
	err = s.placeImage(ctx, im, func(tmp string) error {
		// The temporary dir is renamed to dir: same file names.
		in := func(final string) string { return filepath.Join(tmp, filepath.Base(final)) }
		if err := image.CopyFile(req.Kernel, in(im.KernelPath)); err != nil {
			return fmt.Errorf("copy kernel: %w", err)
		}
		if im.InitrdPath != "" {
			if err := image.CopyFile(req.Initrd, in(im.InitrdPath)); err != nil {
				return fmt.Errorf("copy initrd: %w", err)
			}
		}
		if err := importRootfs(ctx, req.Rootfs, in(im.RootfsPath), size); err != nil {
			return fmt.Errorf("copy rootfs: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("image imported", "image", im.Name, "image_id", im.ID, "rootfs_bytes", im.RootfsBytes)
	return im, nil
}

// placeImage fills a fresh temporary directory with fill, renames it to the
// image's directory and records the image; on failure it removes both. The
// caller has set im's paths to their final places in that directory.
func (s *Service) placeImage(ctx context.Context, im *model.Image, fill func(dir string) error) error {
	dir := s.layout.Image(im.ID)
	tmp, err := os.MkdirTemp(s.layout.ImagesDir(), ".import-")
	if err != nil {
		return err
	}
	fail := func(err error) error {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			s.log.Warn("could not remove a temporary image dir", "dir", tmp, "error", rerr)
		}
		return err
	}
	if err := fill(tmp); err != nil {
		return fail(err)
	}
	if err := sealImageDir(tmp); err != nil { // images are immutable
		return fail(err)
	}
	if err := os.Rename(tmp, dir.Path()); err != nil {
		return fail(err)
	}
	if err := s.store.InsertImage(context.WithoutCancel(ctx), im); err != nil {
		if rerr := removeAllIn(s.layout.ImagesDir(), dir.Path()); rerr != nil {
			s.log.Warn("could not remove an unrecorded image dir", "dir", dir.Path(), "error", rerr)
		}
		return err
	}
	return nil
}

// DeleteImage removes an image, refusing while VMs use it.
func (s *Service) DeleteImage(ctx context.Context, ref string) error {
	var (
		im   *model.Image
		warm []*model.Snapshot
	)
	err := s.store.Transaction(ctx, func(tx *store.Tx) error {
		var err error
		if im, err = tx.ResolveImage(ctx, ref); err != nil {
			return err
		}
		if err := checkImageAccess(ctx, im, false); err != nil {
			return err
		}
		// Its warm snapshots are the image's own: they go with it (no VM
		// depends on them once none uses the image, which DeleteImage
		// checks; its refusal rolls this back).
		if warm, err = tx.WarmSnapshotsOf(ctx, im.ID); err != nil {
			return err
		}
		for _, sn := range warm {
			if err := tx.DeleteSnapshot(ctx, sn.ID); err != nil {
				return err
			}
		}
		if err := tx.DeleteImage(ctx, im.ID); err != nil {
			return fmt.Errorf("delete image %q: %w", im.Name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, sn := range warm {
		if err := removeAllIn(s.SnapshotsDir(), sn.Dir); err != nil {
			s.log.Warn("could not remove a warm snapshot's files", "image", im.Name, "snapshot", sn.Name, "error", err)
		}
	}
	if err := removeAllIn(s.layout.ImagesDir(), s.layout.Image(im.ID).Path()); err != nil {
		return fmt.Errorf("image %q deleted, but its files were not: %w", im.Name, err)
	}
	if err := storage.RemoveImageLayers(s.storageOptions(), im.RootfsPath); err != nil {
		s.log.Warn("could not remove the image's grown disk layers", "image", im.Name, "error", err)
	}
	s.log.Info("image deleted", "image", im.Name, "image_id", im.ID)
	return nil
}

// GetImage resolves an image and the names of the VMs using it.
func (s *Service) GetImage(ctx context.Context, ref string) (*model.Image, []string, error) {
	im, users, err := s.store.ResolveImageUsers(ctx, ref)
	if err == nil {
		err = checkImageAccess(ctx, im, true)
	}
	if err != nil {
		return nil, nil, err
	}
	return im, users, nil
}

// ListImages returns every image.
func (s *Service) ListImages(ctx context.Context) ([]*model.Image, error) {
	ims, err := s.store.ListImages(ctx)
	return visibleImages(ctx, ims), err
}
