// Package firecracker runs banger VMs under Firecracker, optionally inside
// Firecracker's jailer. The VMM is configured over its HTTP API socket
// (firecracker-v1.16.1.yaml) between Launch and Boot.
package firecracker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Firecracker's limits (MachineConfiguration in the API specification).
const (
	MaxVCPUs = 32
	// MinMemoryMiB is banger's floor, the same as the QEMU driver's: the
	// API sets no minimum for mem_size_mib (128 MiB is only its default).
	MinMemoryMiB = 64
)

// BootArgs are the kernel arguments the driver puts before the VM's own:
// the serial console (Firecracker copies it to its stdout, which is the VM
// log), reboot=k so that a guest reboot or Ctrl-Alt-Del ends Firecracker,
// and pci=off since devices are virtio-mmio.
const BootArgs = "console=ttyS0 reboot=k pci=off"

// Device ids banger uses in API paths.
const (
	rootDriveID   = "rootfs"
	configDriveID = "config"
	netIfaceID    = "eth0"
)

// Config configures the driver. Zero fields take the defaults.
type Config struct {
	Binary       string     // default "firecracker", looked up on PATH
	JailerBinary string     // default "jailer", looked up on PATH
	Jailer       JailerMode // default JailerAuto: jailed when the jailer is found
	ChrootBase   string     // jailer --chroot-base-dir; required when jailed
	// UIDBase is the first of the 65536 ids jailed VMs run as. Each jailed
	// Firecracker runs as its own unprivileged user, so that no VMM can
	// signal or ptrace another, nor open another VM's tap or disk: uid and
	// gid UIDBase + (Spec.VsockCID & 0xffff) (see jailUser). Nothing else
	// on the host may use ids UIDBase to UIDBase+65535 (no user, no
	// /etc/subuid range). Default DefaultUIDBase.
	UIDBase   int
	KVMDevice string // default /dev/kvm
}

// DefaultUIDBase is Config.UIDBase's default: far above the ids Debian
// gives users (1000+) and their /etc/subuid ranges (100000 + 65536 per
// user), so no login or container user shares a jailed VMM's id.
const DefaultUIDBase = 1_500_000_000

// maxID bounds the ids a jailed VM runs as: uids are 32 bits, but
// (uid_t)-1 means "no change" to chown and tools disagree on the sign of
// larger ones.
const maxID = 1<<31 - 1

// Driver is the Firecracker driver.
type Driver struct {
	cfg Config

	// kvmUsable is system.KVMUsable; tests replace it on hosts without KVM.
	kvmUsable func(dev string) (bool, string)

	mu       sync.Mutex
	versions map[versionKey]string
}

var (
	_ vmm.Driver     = (*Driver)(nil)
	_ vmm.UserMapper = (*Driver)(nil)
)

// New returns a driver for cfg.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = "firecracker"
	}
	if cfg.JailerBinary == "" {
		cfg.JailerBinary = "jailer"
	}
	if cfg.Jailer == "" {
		cfg.Jailer = JailerAuto
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase = DefaultUIDBase
	}
	if cfg.KVMDevice == "" {
		cfg.KVMDevice = "/dev/kvm"
	}
	return &Driver{cfg: cfg, kvmUsable: system.KVMUsable, versions: map[versionKey]string{}}
}

func (d *Driver) Kind() string { return vmm.KindFirecracker }

// host is what the driver found on this host.
type host struct {
	binary  string // absolute path of firecracker
	version string // "1.16.1"
	jailer  string // absolute path of the jailer; "" when not jailed
}

const installHint = "hint: install a Firecracker v1 release (firecracker and jailer) from https://github.com/firecracker-microvm/firecracker/releases on PATH, or configure the binary's path"

// probeHost finds the binaries and checks their versions. Its errors are
// what Probe reports as the reason.
func (d *Driver) probeHost(ctx context.Context) (host, error) {
	bin, err := lookPath(d.cfg.Binary)
	if err != nil {
		return host{}, fmt.Errorf("firecracker binary %q not found (%s)", d.cfg.Binary, installHint)
	}
	ver, err := d.version(ctx, bin, "Firecracker")
	if err != nil {
		return host{binary: bin}, err
	}
	h := host{binary: bin, version: ver}
	jailed, jailer, err := d.jailerBinary()
	if err != nil || !jailed {
		return h, err
	}
	if err := d.checkJailConfig(); err != nil {
		return h, err
	}
	jver, err := d.version(ctx, jailer, "Jailer")
	if err != nil {
		return h, err
	}
	// jailer.md: a jailer must be used with a Firecracker of the same version.
	if jver != ver {
		return h, fmt.Errorf("jailer %s is v%s but firecracker %s is v%s: they must come from the same release (%s)", jailer, jver, bin, ver, installHint)
	}
	h.jailer = jailer
	return h, nil
}

// jailerBinary resolves the jailer mode: whether this driver jails, and
// with which binary.
func (d *Driver) jailerBinary() (bool, string, error) {
	switch d.cfg.Jailer {
	case JailerOff:
		return false, "", nil
	case JailerOn, JailerAuto:
	default:
		return false, "", errdefs.InvalidArgument("jailer mode %q: want auto, on or off", d.cfg.Jailer)
	}
	p, err := lookPath(d.cfg.JailerBinary)
	if err != nil {
		if d.cfg.Jailer == JailerAuto {
			return false, "", nil
		}
		return false, "", errdefs.FailedPrecondition("jailer binary %q not found and the jailer is required (%s, or turn the jailer off)", d.cfg.JailerBinary, installHint)
	}
	return true, p, nil
}

func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	return filepath.Abs(p)
}

// MinMinorVersion is the oldest Firecracker banger runs: v1.MinMinorVersion.
// banger's guest kernel finds its virtio-mmio devices through ACPI, which
// Firecracker describes from v1.8 (docs/firecracker.md).
const MinMinorVersion = 8

// versionPattern matches the first line of `firecracker --version`
// ("Firecracker v1.16.1") and `jailer --version` ("Jailer v1.16.1").
var versionPattern = regexp.MustCompile(`^(Firecracker|Jailer) v(\d+)\.(\d+)\.(\d+)(\S*)$`)

type versionKey struct {
	path  string
	size  int64
	mtime time.Time
}

// version runs `bin --version` and checks it names the expected program
// (Firecracker or Jailer) at major version 1, the API banger speaks. The
// answer is cached until the file changes.
func (d *Driver) version(ctx context.Context, bin, program string) (string, error) {
	fi, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	key := versionKey{bin, fi.Size(), fi.ModTime()}
	d.mu.Lock()
	v, ok := d.versions[key]
	d.mu.Unlock()
	if ok {
		return v, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version failed: %w (the binary is not a working %s; %s)", bin, err, program, installHint)
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	first = strings.TrimSpace(first)
	m := versionPattern.FindStringSubmatch(first)
	if m == nil || m[1] != program {
		return "", fmt.Errorf("%s is not %s: --version printed %q, want %q (%s)", bin, program, first, program+" v1.x.y", installHint)
	}
	if m[2] != "1" {
		return "", fmt.Errorf("%s is %s v%s.%s.%s, but banger speaks the v1 API (%s)", bin, program, m[2], m[3], m[4], installHint)
	}
	if minor, _ := strconv.Atoi(m[3]); minor < MinMinorVersion {
		return "", fmt.Errorf("%s is %s v%s.%s.%s, older than v1.%d, the oldest banger runs: banger's guest needs virtio-mmio devices described over ACPI (hint: install v1.%d or later from https://github.com/firecracker-microvm/firecracker/releases)", bin, program, m[2], m[3], m[4], MinMinorVersion, MinMinorVersion)
	}
	v = m[2] + "." + m[3] + "." + m[4] + m[5]
	d.mu.Lock()
	d.versions[key] = v
	d.mu.Unlock()
	return v, nil
}

// Probe reports whether Firecracker can run here: the binaries, their
// versions, the jailer and KVM.
func (d *Driver) Probe(ctx context.Context) vmm.Info {
	// Vsock is Firecracker's own userspace device: no vhost module needed.
	info := vmm.Info{Kind: vmm.KindFirecracker, Features: vmm.Features{Vsock: true, KernelELF: true}}
	h, err := d.probeHost(ctx)
	info.Binary, info.Version = h.binary, h.version
	if err != nil {
		info.Reason = err.Error()
		return info
	}
	ok, why := d.kvmUsable(d.cfg.KVMDevice)
	if !ok {
		info.Reason = fmt.Sprintf("Firecracker %s needs KVM: %s (hint: run on a host or VM with hardware virtualisation, kvm_intel or kvm_amd, or use the qemu driver)", h.version, why)
		return info
	}
	info.Available, info.Accel = true, "kvm"
	jail := "not jailed (jailer off)"
	switch {
	case h.jailer != "":
		jail = fmt.Sprintf("jailed by %s as a per-VM uid from %d", h.jailer, d.cfg.UIDBase)
	case d.cfg.Jailer == JailerAuto:
		jail = fmt.Sprintf("not jailed (jailer %q not found)", d.cfg.JailerBinary)
	}
	info.Reason = fmt.Sprintf("Firecracker %s with KVM (%s), %s", h.version, why, jail)
	return info
}

// maxPortSuffix is the longest "_<port>" Firecracker appends to the vsock
// path for a guest-initiated connection.
const maxPortSuffix = len("_4294967295")

// Validate rejects a spec Firecracker cannot run. It starts nothing; it
// reads the kernel's ELF header.
func (d *Driver) Validate(spec vmm.Spec) error {
	switch {
	case spec.VCPUs < 1 || spec.VCPUs > MaxVCPUs:
		return errdefs.InvalidArgument("vcpus %d: Firecracker runs 1 to %d vCPUs (hint: ask for %d or fewer)", spec.VCPUs, MaxVCPUs, MaxVCPUs)
	case spec.MemoryMiB < MinMemoryMiB:
		return errdefs.InvalidArgument("memory %d MiB is too small for a Linux guest (hint: %d MiB or more)", spec.MemoryMiB, MinMemoryMiB)
	case spec.Kernel == "" || spec.RootDisk == "" || spec.ControlSocket == "" || spec.LogPath == "":
		return errdefs.InvalidArgument("incomplete vm spec: kernel, root disk, control socket and log path are required")
	case spec.RootDiskFormat != "" && spec.RootDiskFormat != "raw":
		return errdefs.InvalidArgument("root disk format %q: Firecracker opens raw files and block devices only (hint: --disk-strategy reflink, dm-snapshot or sparse-copy)", spec.RootDiskFormat)
	case spec.MemoryFile != "":
		// Its snapshots always write the memory to a file of their own.
		return errdefs.NotSupported("firecracker: a guest ram file (%s) is a qemu feature", spec.MemoryFile)
	}
	if err := checkInstanceID(spec.ID); err != nil {
		return err
	}
	if err := checkSocket("api", spec.ControlSocket, 0); err != nil {
		return err
	}
	if spec.VsockPath != "" {
		if err := checkSocket("vsock", spec.VsockPath, maxPortSuffix); err != nil {
			return err
		}
		if spec.VsockCID < 3 {
			return errdefs.InvalidArgument("vsock guest cid %d: cids 0 to 2 are reserved, the guest needs 3 or more", spec.VsockCID)
		}
	}
	if spec.Tap != "" {
		if len(spec.Tap) > 15 {
			return errdefs.InvalidArgument("tap name %q is longer than 15 bytes", spec.Tap)
		}
		if hw, err := net.ParseMAC(spec.MAC); err != nil || len(hw) != 6 {
			return errdefs.InvalidArgument("guest mac %q is not an Ethernet address like 02:fc:00:00:00:01", spec.MAC)
		}
	}
	if err := checkKernel(spec.Kernel); err != nil {
		return err
	}
	j, err := d.jail(spec)
	if err != nil {
		return err
	}
	if j != nil {
		if err := checkSocket("jailed api", j.host(jailAPISock), 0); err != nil {
			return err
		}
		if spec.VsockPath != "" {
			if err := checkSocket("jailed vsock", j.host(jailVsock), maxPortSuffix); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkSocket(what, p string, suffix int) error {
	if len(p)+suffix > layout.MaxUnixSocketPath {
		extra := ""
		if suffix > 0 {
			extra = fmt.Sprintf(" (plus %d for Firecracker's _<port> suffix)", suffix)
		}
		return errdefs.InvalidArgument("%s socket path %q is %d bytes%s, over the %d-byte unix socket limit (hint: use a shorter runtime dir or chroot base)", what, p, len(p), extra, layout.MaxUnixSocketPath)
	}
	return nil
}

// checkKernel requires an uncompressed ELF kernel (vmlinux) for this
// architecture: Firecracker does not boot a compressed bzImage on x86_64.
func checkKernel(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errdefs.FailedPrecondition("kernel %s is missing (hint: re-import or rebuild the image)", path)
		}
		return errdefs.FailedPrecondition("kernel %s: %w", path, err)
	}
	defer f.Close()
	hdr := make([]byte, 0x206)
	n, _ := io.ReadFull(f, hdr)
	hdr = hdr[:n]
	if n < 20 || !bytes.Equal(hdr[:4], []byte("\x7fELF")) {
		hint := "Firecracker boots an uncompressed vmlinux"
		if n >= 0x206 && string(hdr[0x202:0x206]) == "HdrS" {
			hint = "this is a compressed bzImage; Firecracker boots the uncompressed vmlinux, which scripts/extract-vmlinux extracts"
		}
		return errdefs.InvalidArgument("kernel %s is not an ELF file (hint: %s)", path, hint)
	}
	want := map[string]uint16{"amd64": 62, "arm64": 183}[runtime.GOARCH] // EM_X86_64, EM_AARCH64
	order := binary.ByteOrder(binary.LittleEndian)
	if hdr[5] == 2 {
		order = binary.BigEndian
	}
	if got := order.Uint16(hdr[18:20]); want != 0 && got != want {
		return errdefs.InvalidArgument("kernel %s is an ELF file for machine %d, not for this host's %s (hint: use a kernel built for %s)", path, got, runtime.GOARCH, runtime.GOARCH)
	}
	return nil
}

// jail returns the VM's jail, or nil when Firecracker runs unjailed.
func (d *Driver) jail(spec vmm.Spec) (*jail, error) {
	jailed, _, err := d.jailerBinary()
	if err != nil {
		return nil, err
	}
	if !jailed {
		return nil, nil
	}
	if err := d.checkJailConfig(); err != nil {
		return nil, err
	}
	bin := d.execFile()
	// The jailer refuses an --exec-file whose name lacks "firecracker".
	if !strings.Contains(filepath.Base(bin), "firecracker") {
		return nil, errdefs.InvalidArgument("firecracker binary %s: the jailer only runs files whose name contains \"firecracker\" (hint: rename it)", bin)
	}
	id, err := d.jailUser(spec.VsockCID)
	if err != nil {
		return nil, err
	}
	return &jail{base: filepath.Clean(d.cfg.ChrootBase), execFile: bin, id: spec.ID, uid: id, gid: id}, nil
}

// execFile is the jailer's --exec-file: the firecracker binary, absolute
// and resolved through symlinks. The jailer canonicalises --exec-file and
// names the jail <chroot_base>/<exec_file_name>/<id> after the resolved
// file, so with firecracker a link to a release file
// (firecracker-v1.16.1-x86_64, as releases are usually installed) the
// driver must build, link into and remove the jail the jailer uses.
func (d *Driver) execFile() string {
	bin, err := lookPath(d.cfg.Binary)
	if err != nil {
		return d.cfg.Binary
	}
	if resolved, err := filepath.EvalSymlinks(bin); err == nil {
		return resolved
	}
	return bin
}

// jailUser is the uid, and the gid, a jailed VM's Firecracker runs as:
// UIDBase + (cid & 0xffff). The daemon derives a VM's vsock CID from its
// guest IPv4 address (the address as a 32-bit number, network.CIDFor), and
// a daemon's guest addresses are unique. In a guest pool of /16 or smaller
// every address shares the upper 16 bits, so the low 16 bits, and with
// them the ids, are unique among the daemon's VMs. (A larger pool could
// give two VMs the same id.) A VM without a CID has no id of its own and
// is refused.
func (d *Driver) jailUser(cid uint32) (int, error) {
	if cid == 0 {
		return 0, errdefs.InvalidArgument("a jailed vm needs a vsock cid: its jail uid derives from it")
	}
	id := int64(d.cfg.UIDBase) + int64(cid&0xffff)
	if id <= 0 || id > maxID {
		return 0, errdefs.InvalidArgument("jail uid %d (uid base %d + vsock cid %d & 0xffff) is out of range 1 to %d (hint: configure a smaller uid base)", id, d.cfg.UIDBase, cid, maxID)
	}
	return int(id), nil
}

// RunAs is the uid and gid the VM's Firecracker runs as: its own jail user
// when jailed (see jailUser), root (0, 0) when not. The daemon gives the
// VM's tap to this user. A spec Validate refuses also gives 0, 0; Launch
// refuses it anyway.
func (d *Driver) RunAs(spec vmm.Spec) (uid, gid int) {
	j, err := d.jail(spec)
	if err != nil || j == nil {
		return 0, 0
	}
	return j.uid, j.gid
}

func (d *Driver) checkJailConfig() error {
	if d.cfg.ChrootBase == "" || !filepath.IsAbs(d.cfg.ChrootBase) {
		return errdefs.InvalidArgument("jailer chroot base %q must be an absolute directory (hint: a directory under banger's state dir)", d.cfg.ChrootBase)
	}
	if d.cfg.UIDBase < 1 || int64(d.cfg.UIDBase)+0xffff > maxID {
		return errdefs.InvalidArgument("jailer uid base %d: the per-VM ids %d to %d must lie within 1 to %d (hint: the default is %d)", d.cfg.UIDBase, d.cfg.UIDBase, int64(d.cfg.UIDBase)+0xffff, maxID, DefaultUIDBase)
	}
	return nil
}

// vmPaths are a VM's files as Firecracker names them: the host paths when
// unjailed, paths inside the jail when jailed.
type vmPaths struct {
	apiSock, vsock, kernel, initrd, rootfs string
	config                                 string // the config disk; empty: none
}

func pathsFor(spec vmm.Spec, j *jail) vmPaths {
	if j == nil {
		return vmPaths{apiSock: spec.ControlSocket, vsock: spec.VsockPath, kernel: spec.Kernel, initrd: spec.Initrd, rootfs: spec.RootDisk, config: spec.ConfigDisk}
	}
	p := vmPaths{apiSock: jailAPISock, vsock: jailVsock, kernel: jailKernel, initrd: jailInitrd, rootfs: jailRootfs}
	if spec.ConfigDisk != "" {
		p.config = jailConfig
	}
	if spec.Initrd == "" {
		p.initrd = ""
	}
	if spec.VsockPath == "" {
		p.vsock = ""
	}
	return p
}

// step is one API request of the configuration, in order.
type step struct {
	method, path string
	body         any
}

// configSteps is what Launch sends after the API socket answers.
//
// The logger has no log_path: Firecracker opens log_path read-write without
// O_APPEND and without creating it, so pointing it at the VM log would
// overwrite the console output from the start of the file. Without it,
// Firecracker logs to its stdout, which vmm.Spawn appends to the VM log,
// jailed or not.
func configSteps(spec vmm.Spec, p vmPaths) []step {
	steps := []step{
		{"PUT", "/logger", logger{Level: "Info", ShowLevel: true}},
		{"PUT", "/machine-config", machineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB}},
		{"PUT", "/boot-source", bootSource{
			KernelImagePath: p.kernel, InitrdPath: p.initrd,
			BootArgs: strings.TrimSpace(BootArgs + " " + spec.KernelArgs),
		}},
		{"PUT", "/drives/" + rootDriveID, drive{DriveID: rootDriveID, PathOnHost: p.rootfs, IsRootDevice: true}},
	}
	if p.config != "" {
		steps = append(steps, step{"PUT", "/drives/" + configDriveID, drive{DriveID: configDriveID, PathOnHost: p.config, IsReadOnly: true}})
	}
	if spec.Tap != "" {
		steps = append(steps, step{"PUT", "/network-interfaces/" + netIfaceID, networkInterface{IfaceID: netIfaceID, HostDevName: spec.Tap, GuestMAC: spec.MAC}})
	}
	if p.vsock != "" {
		steps = append(steps, step{"PUT", "/vsock", vsock{GuestCID: spec.VsockCID, UDSPath: p.vsock}})
	}
	return append(steps, step{"PUT", "/entropy", entropyDevice{}})
}

// command is the program and arguments Launch runs for spec.
func (d *Driver) command(h host, spec vmm.Spec, j *jail) (string, []string) {
	if j == nil {
		return h.binary, []string{"--id", spec.ID, "--api-sock", spec.ControlSocket}
	}
	return h.jailer, j.args([]string{"--api-sock", jailAPISock})
}

// Launch starts Firecracker (under the jailer when configured), waits for
// its API socket and configures the VM, which is left ready to boot. On
// error no process is left, nor any file Launch created.
func (d *Driver) Launch(ctx context.Context, spec vmm.Spec) (vmm.Process, error) {
	if err := d.Validate(spec); err != nil {
		return vmm.Process{}, err
	}
	h, err := d.probeHost(ctx)
	if err != nil {
		return vmm.Process{}, errdefs.FailedPrecondition("firecracker: %w", err)
	}
	if ok, why := d.kvmUsable(d.cfg.KVMDevice); !ok {
		return vmm.Process{}, errdefs.FailedPrecondition("firecracker needs KVM: %s (hint: use the qemu driver on this host)", why)
	}
	for _, p := range []string{spec.Initrd, spec.RootDisk, spec.ConfigDisk} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return vmm.Process{}, errdefs.FailedPrecondition("firecracker: %w", err)
		}
	}
	var snap vmm.SnapshotMeta
	if spec.Restore != nil {
		if snap, err = d.checkRestore(spec); err != nil {
			return vmm.Process{}, err
		}
	}
	j, err := d.jail(spec)
	if err != nil {
		return vmm.Process{}, err
	}

	// Undo runs in reverse on failure, on a context that survives the
	// caller's cancellation.
	var undo []func(context.Context) error
	fail := func(err error) (vmm.Process, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		errs := []error{err}
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i](ctx))
		}
		return vmm.Process{}, errors.Join(errs...)
	}
	undo = append(undo, func(ctx context.Context) error { return d.Cleanup(ctx, spec) })
	if j != nil {
		if err := d.prepareJail(spec, j); err != nil {
			return fail(fmt.Errorf("firecracker: %w", err))
		}
		if spec.Restore != nil {
			if err := placeSnapshot(spec, j); err != nil {
				return fail(fmt.Errorf("firecracker: put snapshot in jail: %w", err))
			}
		}
	}
	path, args := d.command(h, spec, j)
	proc, err := vmm.SpawnFor(spec, path, args)
	if err != nil {
		return fail(fmt.Errorf("firecracker: %w", err))
	}
	undo = append(undo, func(ctx context.Context) error { return vmm.Kill(ctx, proc) })
	if err := vmm.WaitSocket(ctx, spec.ControlSocket, proc, vmm.SocketTimeout); err != nil {
		return fail(fmt.Errorf("firecracker: %w (hint: the VM log %s has Firecracker's own message)", err, spec.LogPath))
	}
	c := newClient(spec.ControlSocket)
	var v firecrackerVersion
	if err := c.do(ctx, "GET", "/version", nil, &v); err != nil {
		return fail(err)
	}
	steps := configSteps(spec, pathsFor(spec, j))
	if spec.Restore != nil {
		steps = restoreSteps(spec, pathsFor(spec, j), j, snap.RootDisk)
	}
	for _, s := range steps {
		if err := c.do(ctx, s.method, s.path, s.body, nil); err != nil {
			return fail(err)
		}
	}
	return proc, nil
}

// prepareJail builds the jail and points the daemon's socket paths at the
// sockets inside it. connect() follows symlinks, so the daemon dials
// spec.ControlSocket and spec.VsockPath as if Firecracker had bound them.
// Guest-initiated vsock connections are the exception: Firecracker connects
// to <uds_path>_<port> inside the jail, so a host listener for them belongs
// there (VsockListenPath).
func (d *Driver) prepareJail(spec vmm.Spec, j *jail) error {
	if err := j.prepare(spec.Kernel, spec.Initrd, spec.RootDisk, spec.ConfigDisk); err != nil {
		return err
	}
	links := map[string]string{spec.ControlSocket: j.host(jailAPISock)}
	if spec.VsockPath != "" {
		links[spec.VsockPath] = j.host(jailVsock)
	}
	for link, target := range links {
		if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.Symlink(target, link); err != nil {
			return fmt.Errorf("link socket into jail: %w", err)
		}
	}
	return nil
}

// VsockListenPath is where a host process must listen to accept the guest's
// vsock connections to port: <uds_path>_<port> as Firecracker sees it,
// inside the jail when jailed.
func (d *Driver) VsockListenPath(spec vmm.Spec, port uint32) (string, error) {
	j, err := d.jail(spec)
	if err != nil {
		return "", err
	}
	base := spec.VsockPath
	if j != nil {
		base = j.host(jailVsock)
	}
	return fmt.Sprintf("%s_%d", base, port), nil
}

// Boot starts the configured guest, or resumes a restored one.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) error {
	if spec.Restore != nil {
		return d.Resume(ctx, spec)
	}
	return newClient(spec.ControlSocket).do(ctx, "PUT", "/actions", instanceAction{ActionType: "InstanceStart"}, nil)
}

// Shutdown presses Ctrl-Alt-Del on the guest's i8042 keyboard. The guest
// shuts down and reboots, and with reboot=k Firecracker exits; Shutdown
// does not wait for that.
func (d *Driver) Shutdown(ctx context.Context, spec vmm.Spec) error {
	return newClient(spec.ControlSocket).do(ctx, "PUT", "/actions", instanceAction{ActionType: "SendCtrlAltDel"}, nil)
}

// Cleanup removes the API and vsock sockets (or the links to them) and the
// VM's jail, and gives the VM's disk back to the daemon's user (root) from
// the jail user it was lent to. It is idempotent, and safe whatever the
// jailer mode was when the VM started: a jail is removed wherever one
// exists for the VM, and a disk is given back whoever it was lent to.
func (d *Driver) Cleanup(_ context.Context, spec vmm.Spec) error {
	var errs []error
	for _, p := range []string{spec.ControlSocket, spec.VsockPath} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("firecracker: remove %s: %w", p, err))
		}
	}
	if d.cfg.ChrootBase != "" && checkInstanceID(spec.ID) == nil {
		j := jail{base: filepath.Clean(d.cfg.ChrootBase), execFile: d.execFile(), id: spec.ID}
		if err := j.remove(); err != nil {
			errs = append(errs, fmt.Errorf("firecracker: %w", err))
		}
	}
	// Usually the jail's link already did it; this covers a disk whose jail
	// is out of reach (deleted by hand, or the chroot base reconfigured).
	if spec.RootDisk != "" {
		if err := giveBack(spec.RootDisk); err != nil {
			errs = append(errs, fmt.Errorf("firecracker: give root disk %s back: %w", spec.RootDisk, err))
		}
	}
	return errors.Join(errs...)
}
