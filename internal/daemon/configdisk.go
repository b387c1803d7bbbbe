package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
)

// Identity by config disk (issue 11 with internal/identity): a VM of an
// image whose initramfs applies config disks gets its identity as a small
// read-only second disk, written at create next to its root disk and
// attached at every start, whatever its disk strategy (a qcow2 overlay or a
// dm device cannot take debugfs writes). Other images keep debugfs on raw
// strategies, and trust on first use on the others.

// configDiskName is the config disk's file in the VM's directory.
const configDiskName = "config.disk"

func (s *Service) configDiskPath(v *model.VM) string {
	return filepath.Join(s.layout.VM(v.ID).Path(), configDiskName)
}

// configDiskFor is the config disk a start attaches: v's, if it has one.
func (s *Service) configDiskFor(v *model.VM) string {
	p := s.configDiskPath(v)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// appliesConfigDisk reports whether img's initramfs applies a config disk
// (its manifest says so; imported images have none).
func appliesConfigDisk(img *model.Image) bool {
	if img == nil || len(img.Manifest) == 0 {
		return false
	}
	var m api.ImageManifest
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		return false
	}
	return m.HasInitramfsFeature(api.InitramfsConfigDisk)
}

// imageFacts reads what the identity files need from img once per image
// (images are immutable).
func (s *Service) imageFacts(ctx context.Context, img *model.Image) (identity.ImageFacts, error) {
	if f, ok := s.disk.facts.Load(img.ID); ok {
		return f.(identity.ImageFacts), nil
	}
	f, err := identity.ReadImage(ctx, img.RootfsPath, s.layout.TmpDir(), s.cfg.GuestUser)
	if err != nil {
		return f, err
	}
	s.disk.facts.Store(img.ID, f)
	return f, nil
}
