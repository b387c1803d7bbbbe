package build

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/dustin/go-humanize"
)

// Artifact file names in the output directory.
const (
	ArtifactVmlinuz = "vmlinuz"     // bzImage: what QEMU boots
	ArtifactVmlinux = "vmlinux"     // uncompressed ELF with the PVH note: what Firecracker boots
	ArtifactInitrd  = "initrd.img"  // banger's initramfs (gzip newc cpio)
	ArtifactRootfs  = "rootfs.ext4" // raw ext4, Spec.SizeBytes, sparse
	ManifestFile    = "manifest.json"

	// RootLabel is the ext4 label of the root filesystem.
	RootLabel = "banger-root"
	// ManifestVersion is the manifest's format version.
	ManifestVersion = 1
)

// ArtifactNames are the artifacts of every build, in manifest order.
var ArtifactNames = []string{ArtifactVmlinuz, ArtifactVmlinux, ArtifactInitrd, ArtifactRootfs}

// Manifest describes a built image. The daemon stores it with the image
// record and `banger image show` prints it.
type Manifest struct {
	FormatVersion int `json:"format_version"`

	Release       string   `json:"release"`
	Mirror        string   `json:"mirror"`
	ExtraPackages []string `json:"extra_packages,omitempty"`
	Recipe        string   `json:"recipe"` // Recipe() of the banger that built it

	KernelPackage        string   `json:"kernel_package"`         // e.g. linux-image-cloud-amd64
	KernelPackageVersion string   `json:"kernel_package_version"` // its Debian version
	KernelVersion        string   `json:"kernel_version"`         // uname -r
	KernelCompression    string   `json:"kernel_compression"`     // of the bzImage's payload
	KernelEntry          uint64   `json:"kernel_entry"`           // vmlinux ELF entry point
	PVHEntry             uint64   `json:"pvh_entry,omitempty"`    // vmlinux Xen PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)
	KernelCmdline        string   `json:"kernel_cmdline"`         // what the image needs on the kernel command line
	InitramfsModules     []string `json:"initramfs_modules"`      // module files, in load order

	SizeBytes    int64 `json:"size_bytes"`    // of rootfs.ext4
	ContentBytes int64 `json:"content_bytes"` // of the root tree

	BuiltAt         time.Time `json:"built_at"`
	DurationSeconds float64   `json:"duration_seconds"`

	Packages  []Package  `json:"packages"`
	Artifacts []Artifact `json:"artifacts"`
}

// Artifact is one file of the image.
type Artifact struct {
	Name   string `json:"name"` // one of ArtifactNames
	File   string `json:"file"` // relative to the image directory
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Artifact returns the artifact called name.
func (m *Manifest) Artifact(name string) (Artifact, bool) {
	for _, a := range m.Artifacts {
		if a.Name == name {
			return a, true
		}
	}
	return Artifact{}, false
}

// Package returns the installed package called name.
func (m *Manifest) Package(name string) (Package, bool) {
	for _, p := range m.Packages {
		if p.Name == name {
			return p, true
		}
	}
	return Package{}, false
}

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
