package build

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/layout"
)

// Artifact file names in the output directory: an image directory's, as
// internal/layout names them (the one owner of those names).
const (
	ArtifactVmlinuz = layout.ImageKernelFile  // bzImage: what QEMU boots
	ArtifactVmlinux = layout.ImageVmlinuxFile // uncompressed ELF with the PVH note: what Firecracker boots
	ArtifactInitrd  = layout.ImageInitrdFile  // banger's initramfs (gzip newc cpio)
	ArtifactRootfs  = layout.ImageRootfsFile  // raw ext4, Spec.SizeBytes, sparse
	ManifestFile    = layout.ImageManifestFile

	// RootLabel is the ext4 label of the root filesystem.
	RootLabel = "banger-root"
	// ManifestVersion is the manifest's format version.
	ManifestVersion = api.ImageManifestVersion
)

// ArtifactNames are the artifacts of every build, in manifest order.
var ArtifactNames = []string{ArtifactVmlinuz, ArtifactVmlinux, ArtifactInitrd, ArtifactRootfs}

// Manifest describes a built image; its schema is api.ImageManifest.
type Manifest = api.ImageManifest

// Artifact is one file of the image.
type Artifact = api.ImageArtifact

// ReadManifest reads dir/manifest.json.
func ReadManifest(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", filepath.Join(dir, ManifestFile), err)
	}
	return &m, nil
}

func roundSeconds(since time.Time) float64 {
	return math.Round(time.Since(since).Seconds()*10) / 10
}

func ibytes(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
