// Package layout owns every path banger uses on the host. Nothing else in
// banger joins path segments under the state or runtime directory: it asks a
// Layout (or the VMDir/ImageDir it hands out) instead.
package layout

import (
	"fmt"
	"os"
	"path/filepath"
)

const (
	DefaultStateDir   = "/var/lib/banger"
	DefaultRuntimeDir = "/run/banger"

	// EnvStateDir and EnvRuntimeDir override the defaults; flags override both.
	EnvStateDir   = "BANGER_STATE_DIR"
	EnvRuntimeDir = "BANGER_RUNTIME_DIR"

	// MaxUnixSocketPath is the longest path a unix socket can be bound to
	// (sun_path is 108 bytes, NUL included).
	MaxUnixSocketPath = 107
)

// Layout is the root of banger's on-host file tree.
type Layout struct {
	StateDir   string // persistent: database, images, VM disks, ssh material
	RuntimeDir string // volatile: sockets
}

// FromEnv returns the layout given by the environment, else the defaults.
func FromEnv() Layout {
	l := Layout{StateDir: DefaultStateDir, RuntimeDir: DefaultRuntimeDir}
	if v := os.Getenv(EnvStateDir); v != "" {
		l.StateDir = v
	}
	if v := os.Getenv(EnvRuntimeDir); v != "" {
		l.RuntimeDir = v
	}
	return l
}

// Abs makes both directories absolute.
func (l Layout) Abs() (Layout, error) {
	var err error
	if l.StateDir, err = filepath.Abs(l.StateDir); err != nil {
		return l, err
	}
	if l.RuntimeDir, err = filepath.Abs(l.RuntimeDir); err != nil {
		return l, err
	}
	return l, nil
}

// Ensure creates the directories the daemon needs, private to root.
func (l Layout) Ensure() error {
	for _, d := range []string{l.StateDir, l.ImagesDir(), l.VMsDir(), l.SSHDir(), l.TmpDir(), l.CacheDir(), l.RuntimeDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
	}
	return nil
}

func (l Layout) DBPath() string        { return filepath.Join(l.StateDir, "banger.db") }
func (l Layout) ReservePath() string   { return filepath.Join(l.StateDir, "reserve") }
func (l Layout) ImagesDir() string     { return filepath.Join(l.StateDir, "images") }
func (l Layout) VMsDir() string        { return filepath.Join(l.StateDir, "vms") }
func (l Layout) SSHDir() string        { return filepath.Join(l.StateDir, "ssh") }
func (l Layout) KnownHosts() string    { return filepath.Join(l.SSHDir(), "known_hosts") }
func (l Layout) ClientKey() string     { return filepath.Join(l.SSHDir(), "id_ed25519") }
func (l Layout) CacheDir() string      { return filepath.Join(l.StateDir, "cache") }
func (l Layout) TmpDir() string        { return filepath.Join(l.StateDir, "tmp") }
func (l Layout) JailDir() string       { return filepath.Join(l.StateDir, "jail") }
func (l Layout) ControlSocket() string { return filepath.Join(l.RuntimeDir, "banger.sock") }
func (l Layout) LockFile() string      { return filepath.Join(l.StateDir, "daemon.lock") }
func (l Layout) PackageCache() string  { return filepath.Join(l.CacheDir(), "apt") }

// VMMSocket is the VMM's control socket: Firecracker's API socket, QEMU's QMP socket.
func (l Layout) VMMSocket(short string) string {
	return filepath.Join(l.RuntimeDir, "fc-"+short+".sock")
}

// VsockPath is the default host side of a VM's hybrid vsock.
func (l Layout) VsockPath(short string) string {
	return filepath.Join(l.RuntimeDir, "fc-"+short+".vsock")
}

// AgentSocket is the unix socket of a VM's guest agent channel (QEMU's
// virtio-serial port), in the root-only runtime dir.
func (l Layout) AgentSocket(short string) string {
	return filepath.Join(l.RuntimeDir, "fc-"+short+".agent")
}

// TapName and DMName are the per-VM kernel object names.
func TapName(short string) string { return "tap-fc-" + short }
func DMName(short string) string  { return "fc-rootfs-" + short }

// CheckSocketPath returns an error when p cannot be bound as a unix socket.
func CheckSocketPath(p string) error {
	if len(p) > MaxUnixSocketPath {
		return fmt.Errorf("socket path %q is %d bytes, over the %d-byte unix socket limit (hint: use a shorter --runtime-dir)", p, len(p), MaxUnixSocketPath)
	}
	return nil
}

// VMDir is one VM's directory under the state dir.
type VMDir string

func (l Layout) VM(id string) VMDir { return VMDir(filepath.Join(l.VMsDir(), id)) }

func (d VMDir) Path() string     { return string(d) }
func (d VMDir) RootDisk() string { return filepath.Join(string(d), "rootfs.ext4") }
func (d VMDir) LogPath() string  { return filepath.Join(string(d), "vm.log") }

// MemoryFile is where a VM that runs with its RAM in a file (a warm
// image's template) has it.
func (d VMDir) MemoryFile() string { return filepath.Join(string(d), "memory.ram") }

// File names in an image directory. layout owns them: the image builder
// writes its artifacts under these names.
const (
	ImageKernelFile   = "vmlinuz"       // bzImage, for QEMU
	ImageVmlinuxFile  = "vmlinux"       // uncompressed ELF kernel, for Firecracker
	ImageInitrdFile   = "initrd.img"    // initramfs
	ImageRootfsFile   = "rootfs.ext4"   // root filesystem image
	ImageManifestFile = "manifest.json" // the builder's manifest
)

// ImageDir is one image's directory under the state dir.
type ImageDir string

func (l Layout) Image(id string) ImageDir { return ImageDir(filepath.Join(l.ImagesDir(), id)) }

func (d ImageDir) Path() string     { return string(d) }
func (d ImageDir) Kernel() string   { return filepath.Join(string(d), ImageKernelFile) }
func (d ImageDir) Vmlinux() string  { return filepath.Join(string(d), ImageVmlinuxFile) }
func (d ImageDir) Initrd() string   { return filepath.Join(string(d), ImageInitrdFile) }
func (d ImageDir) Rootfs() string   { return filepath.Join(string(d), ImageRootfsFile) }
func (d ImageDir) Manifest() string { return filepath.Join(string(d), ImageManifestFile) }
