package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/image/build"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/system"
)

// BuildSpec checks a build request and returns the builder's spec; it is
// cheap and runs before any long work (and before the API starts
// streaming), so bad input gets a plain error.
func (s *Service) BuildSpec(ctx context.Context, req api.BuildImageRequest) (build.Spec, error) {
	if req.Name == "" {
		req.Name = DefaultImage
	}
	if err := ValidateName("image", req.Name); err != nil {
		return build.Spec{}, err
	}
	if _, err := s.store.ResolveImage(ctx, req.Name); err == nil {
		return build.Spec{}, errdefs.AlreadyExists("image %q already exists (hint: banger image delete %s, or pick another name)", req.Name, req.Name)
	}
	spec := build.Spec{Release: req.Release, Packages: req.Packages, SizeBytes: req.SizeBytes,
		CacheDir: s.cfg.PackageCache, WorkDir: s.layout.TmpDir()}
	// The daemon's own binary is banger-agent when called so (see
	// cmd/bangerd's main): every image it builds gets the agent.
	spec.AgentBinary = s.agentBinary()
	if spec.CacheDir == "" {
		spec.CacheDir = s.layout.PackageCache()
	}
	if s.cfg.Mirror != "" {
		spec.Mirror = s.cfg.Mirror
	}
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return build.Spec{}, err
	}
	if err := s.checkBuildSize(ctx, spec.SizeBytes); err != nil {
		return build.Spec{}, err
	}
	return spec, nil
}

// BuildImage builds a Debian image named name from spec and registers it.
// A build that fails or is cancelled registers nothing and leaves nothing.
func (s *Service) BuildImage(ctx context.Context, name string, spec build.Spec, progress func(build.Event)) (*model.Image, error) {
	if name == "" {
		name = DefaultImage
	}
	// One build at a time: a build is heavy and two would only slow each
	// other down.
	if !s.buildMu.TryLock() {
		return nil, errdefs.Conflict("another image build is running (hint: wait for it to finish)")
	}
	defer s.buildMu.Unlock()
	log := s.log.With("op", "image.build", "image", name)
	log.Info("image build begun", "release", spec.Release, "packages", strings.Join(spec.Packages, ","), "size_bytes", spec.SizeBytes)

	im := &model.Image{ID: system.NewID(), Name: name, OwnerUID: ownerUID(ctx)}
	dir := s.layout.Image(im.ID)
	im.KernelPath, im.VmlinuxPath = dir.Kernel(), dir.Vmlinux()
	im.InitrdPath, im.RootfsPath = dir.Initrd(), dir.Rootfs()
	err := s.placeImage(ctx, im, func(tmp string) error {
		m, err := build.New(log).Build(ctx, spec, tmp, func(ev build.Event) {
			log.Debug("build stage", "stage", ev.Stage, "status", ev.Status, "detail", ev.Detail)
			if progress != nil {
				progress(ev)
			}
		})
		if err != nil {
			return err
		}
		return fillFromManifest(im, m)
	})
	if err != nil {
		// The build's journal line (as vm operations have theirs).
		log.Warn("image build failed", "error", err)
		if errors.Is(err, context.Canceled) {
			return nil, fmt.Errorf("image build cancelled: nothing was registered: %w", err)
		}
		return nil, err
	}
	log.Info("image built", "image_id", im.ID, "rootfs_bytes", im.RootfsBytes)
	return im, nil
}

// fillFromManifest takes the image's size, command line and manifest from
// what the builder recorded.
func fillFromManifest(im *model.Image, m *build.Manifest) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	im.Manifest = raw
	im.RootfsBytes = m.SizeBytes
	im.Cmdline = imageArgs(m.KernelCmdline)
	return nil
}

// imageArgs keeps what an image's command line adds to what banger sets
// itself (console, root device, panic behaviour).
func imageArgs(cmdline string) string {
	var keep []string
	for _, tok := range strings.Fields(cmdline) {
		key, _, _ := strings.Cut(tok, "=")
		switch key {
		case "console", "root", "rw", "ro", "panic":
			continue
		}
		keep = append(keep, tok)
	}
	return strings.Join(keep, " ")
}
