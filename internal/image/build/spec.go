package build

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/banger-vm/banger/errdefs"
)

// Defaults of Spec.
const (
	DefaultRelease        = "bookworm"
	DefaultKernelPackage  = "linux-image-cloud-amd64"
	DefaultMirror         = "http://deb.debian.org/debian"
	DefaultSecurityMirror = "http://deb.debian.org/debian-security"
	DefaultSizeBytes      = 2 << 30

	// MinSizeBytes is the quick lower bound checked before any work: the
	// default image's content alone is about 350 MiB. The exact check runs
	// once the root is built.
	MinSizeBytes = 512 << 20
	// MaxSizeBytes guards against a unit mistake (a size in KiB taken as
	// MiB); the ext4 image is sparse, but this much is never meant.
	MaxSizeBytes = 1 << 40
)

// Releases are the Debian codenames Build knows, with whether the release
// has -updates and -security suites.
var Releases = map[string]Release{
	"bullseye": {Version: "11", Updates: true},
	"bookworm": {Version: "12", Updates: true},
	"trixie":   {Version: "13", Updates: true},
	"forky":    {Version: "14", Updates: true},
	"sid":      {Version: "unstable"},
}

// Release describes one Debian release.
type Release struct {
	Version string // "12"
	Updates bool   // has <codename>-updates and <codename>-security
}

// BasePackages are what every image holds on top of mmdebstrap's minbase
// variant: what the guest needs to boot with systemd, reach the network
// and accept SSH, plus the kernel package (Spec.KernelPackage).
//
// tiny-initramfs is there only because Debian's kernel packages depend on
// "initramfs-tools | linux-initramfs-tool": it is the smallest provider
// (a few hundred KiB, no busybox, no klibc). banger boots with its own
// initramfs; the one tiny-initramfs makes is removed from the image.
var BasePackages = []string{
	"systemd-sysv", "udev", "kmod", "openssh-server", "iproute2",
	"ca-certificates", "sudo", "tiny-initramfs",
}

// InitramfsModules are the kernel modules the initramfs loads, with their
// dependencies resolved from modules.dep: virtio over PCI (QEMU q35,
// Firecracker --enable-pci) and over MMIO (Firecracker, QEMU microvm),
// the disk and network drivers, and ext4 (skipped when built in).
var InitramfsModules = []string{"virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "ext4"}

// Spec says what image to build. The zero value builds the default image
// (with the package cache and work directory left to the caller: see
// CacheDir and WorkDir).
type Spec struct {
	// Release is a Debian codename (a key of Releases). Default bookworm.
	Release string `json:"release"`
	// Packages are extra Debian packages to install.
	Packages []string `json:"packages,omitempty"`
	// SizeBytes is the size of the ext4 root image (sparse). Default 2 GiB.
	SizeBytes int64 `json:"size_bytes"`
	// KernelPackage is the package the kernel comes from. Default
	// linux-image-cloud-amd64.
	KernelPackage string `json:"kernel_package"`
	// Mirror is the Debian archive. Default http://deb.debian.org/debian.
	Mirror string `json:"mirror"`
	// SecurityMirror serves <release>-security. Default
	// http://deb.debian.org/debian-security; "none" leaves the security
	// suite out (e.g. with a local mirror that has none).
	SecurityMirror string `json:"security_mirror,omitempty"`
	// CacheDir keeps the downloaded .deb files between builds (the daemon
	// passes <state>/cache/apt). Empty means no cache.
	CacheDir string `json:"-"`
	// WorkDir is where the temporary build directory goes (the daemon
	// passes <state>/tmp). Default os.TempDir().
	WorkDir string `json:"-"`
	// Busybox is a statically linked busybox for the initramfs. Default:
	// busybox on PATH, which must be static.
	Busybox string `json:"-"`

	// Guest agent (issue 10).
	// AgentBinary is a static banger-agent the image gets at
	// agent.BinaryPath, started at boot by agent.SystemdUnit; the daemon
	// passes its own binary (/proc/self/exe: banger is banger-agent when
	// called so). Empty: the image has no agent.
	AgentBinary string `json:"-"`
}

// WithDefaults returns s with its empty fields set to their defaults.
func (s Spec) WithDefaults() Spec {
	if s.Release == "" {
		s.Release = DefaultRelease
	}
	if s.SizeBytes == 0 {
		s.SizeBytes = DefaultSizeBytes
	}
	if s.KernelPackage == "" {
		s.KernelPackage = DefaultKernelPackage
	}
	if s.Mirror == "" {
		s.Mirror = DefaultMirror
	}
	if s.SecurityMirror == "" {
		s.SecurityMirror = DefaultSecurityMirror
	}
	s.Packages = slices.Clone(s.Packages)
	return s
}

// packageNameRE is Debian policy's package name syntax (5.6.7): lowercase
// letters, digits, '+', '-' and '.', at least two characters, starting
// with a letter or digit.
var packageNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)

// Validate checks s (with defaults applied) before any work starts: every
// problem is an errdefs.ErrInvalidArgument error naming the field.
func (s *Spec) Validate() error {
	d := s.WithDefaults()
	if _, ok := Releases[d.Release]; !ok {
		known := make([]string, 0, len(Releases))
		for r := range Releases {
			known = append(known, r)
		}
		sort.Strings(known)
		return errdefs.InvalidArgument("unknown Debian release %q (hint: one of %s)", d.Release, strings.Join(known, ", "))
	}
	if !packageNameRE.MatchString(d.KernelPackage) || !strings.HasPrefix(d.KernelPackage, "linux-image-") {
		return errdefs.InvalidArgument("kernel package %q is not a linux-image-* package name", d.KernelPackage)
	}
	for _, p := range d.Packages {
		if !packageNameRE.MatchString(p) {
			return errdefs.InvalidArgument("package name %q is not valid (Debian package names are lowercase letters, digits, '+', '-' and '.')", p)
		}
	}
	if d.SizeBytes < MinSizeBytes {
		return errdefs.InvalidArgument("image size %s is too small: a Debian root filesystem needs at least %s (hint: --size 2G)",
			humanize.IBytes(uint64(max(d.SizeBytes, 0))), humanize.IBytes(MinSizeBytes))
	}
	if d.SizeBytes > MaxSizeBytes {
		return errdefs.InvalidArgument("image size %s is larger than %s", humanize.IBytes(uint64(d.SizeBytes)), humanize.IBytes(MaxSizeBytes))
	}
	if err := checkMirror("mirror", d.Mirror); err != nil {
		return err
	}
	if d.SecurityMirror != "none" {
		if err := checkMirror("security mirror", d.SecurityMirror); err != nil {
			return err
		}
	}
	// mmdebstrap's special hooks (sync-in, sync-out) split their
	// arguments on whitespace: the paths must not hold any.
	for name, p := range map[string]string{"cache dir": d.CacheDir, "work dir": d.WorkDir, "busybox": d.Busybox} {
		if p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			return errdefs.InvalidArgument("%s %q is not an absolute path", name, p)
		}
		if strings.ContainsFunc(p, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return errdefs.InvalidArgument("%s %q holds whitespace or control characters", name, p)
		}
	}
	return nil
}

func checkMirror(what, m string) error {
	u, err := url.Parse(m)
	if err != nil || u.Host == "" && u.Scheme != "file" || strings.ContainsAny(m, " \t\n\"'") {
		return errdefs.InvalidArgument("%s %q is not a URL", what, m)
	}
	switch u.Scheme {
	case "http", "https", "file":
	default:
		return errdefs.InvalidArgument("%s %q: scheme %q is not http, https or file", what, m, u.Scheme)
	}
	return nil
}

// allPackages is the --include list: base, kernel, extras, without duplicates.
func (s Spec) allPackages() []string {
	var out []string
	for _, p := range slices.Concat(BasePackages, []string{s.KernelPackage}, s.Packages) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// sources are the apt source lines of the build.
func (s Spec) sources() []string {
	rel := Releases[s.Release]
	lines := []string{fmt.Sprintf("deb %s %s main", s.Mirror, s.Release)}
	if rel.Updates {
		lines = append(lines, fmt.Sprintf("deb %s %s-updates main", s.Mirror, s.Release))
		if s.SecurityMirror != "none" {
			lines = append(lines, fmt.Sprintf("deb %s %s-security main", s.SecurityMirror, s.Release))
		}
	}
	return lines
}
