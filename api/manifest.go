package api

import "time"

// ImageManifestVersion is the format version of ImageManifest.
const ImageManifestVersion = 1

// ImageManifest describes a built image: how it was made, what is in it and
// the checksums of its files. The image builder writes it as manifest.json
// next to the artifacts, the daemon stores it with the image and `banger
// image show` prints it. This is the one definition of its schema.
type ImageManifest struct {
	FormatVersion int `json:"format_version"`

	Release       string   `json:"release"`
	Mirror        string   `json:"mirror"`
	ExtraPackages []string `json:"extra_packages,omitempty"`
	Recipe        string   `json:"recipe"` // a digest of the recipe of the banger that built it

	KernelPackage        string   `json:"kernel_package"`         // e.g. linux-image-cloud-amd64
	KernelPackageVersion string   `json:"kernel_package_version"` // its Debian version
	KernelVersion        string   `json:"kernel_version"`         // uname -r
	KernelCompression    string   `json:"kernel_compression"`     // of the bzImage's payload
	KernelEntry          uint64   `json:"kernel_entry"`           // vmlinux ELF entry point
	PVHEntry             uint64   `json:"pvh_entry,omitempty"`    // vmlinux Xen PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)
	KernelCmdline        string   `json:"kernel_cmdline"`         // what the image needs on the kernel command line
	InitramfsModules     []string `json:"initramfs_modules"`      // module files, in load order
	// InitramfsFeatures are what the image's initramfs /init can do beyond
	// mounting the root, e.g. InitramfsConfigDisk. Absent in older images.
	InitramfsFeatures []string `json:"initramfs_features,omitempty"`

	SizeBytes    int64 `json:"size_bytes"`    // of the root filesystem image
	ContentBytes int64 `json:"content_bytes"` // of the root tree

	BuiltAt         time.Time `json:"built_at"`
	DurationSeconds float64   `json:"duration_seconds"`

	Packages  []ImagePackage  `json:"packages"`
	Artifacts []ImageArtifact `json:"artifacts"`

	// Guest agent (issue 10): nil for an image without banger-agent.
	Agent *ImageAgent `json:"agent,omitempty"`
}

// ImageAgent is the guest agent an image carries.
type ImageAgent struct {
	Path     string `json:"path"`     // in the guest
	Protocol int    `json:"protocol"` // the agent protocol version it speaks
	SHA256   string `json:"sha256"`   // of the binary
}

// InitramfsConfigDisk is the InitramfsFeatures entry of an initramfs that
// applies a VM's config disk (its identity files) onto the root before
// switching to it. A VM of an image without it gets its identity written
// onto its raw root disk instead.
const InitramfsConfigDisk = "config-disk"

// HasInitramfsFeature reports whether the image's initramfs has feature f.
func (m *ImageManifest) HasInitramfsFeature(f string) bool {
	for _, x := range m.InitramfsFeatures {
		if x == f {
			return true
		}
	}
	return false
}

// ImageArtifact is one file of an image.
type ImageArtifact struct {
	Name   string `json:"name"` // the artifact's file name in an image directory
	File   string `json:"file"` // relative to the image directory
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ImagePackage is one Debian package installed in an image.
type ImagePackage struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch,omitempty"`
}

// Artifact returns the artifact called name.
func (m *ImageManifest) Artifact(name string) (ImageArtifact, bool) {
	for _, a := range m.Artifacts {
		if a.Name == name {
			return a, true
		}
	}
	return ImageArtifact{}, false
}

// Package returns the installed package called name.
func (m *ImageManifest) Package(name string) (ImagePackage, bool) {
	for _, p := range m.Packages {
		if p.Name == name {
			return p, true
		}
	}
	return ImagePackage{}, false
}
