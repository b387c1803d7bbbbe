// Package qemu runs banger VMs under QEMU: with KVM where /dev/kvm is
// usable, with TCG software emulation where it is not (slow, but it is how
// banger runs inside a VM without nested virtualisation).
package qemu

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Machine is q35: on these TCG hosts -M microvm hung silently in 6 of 12
// boots while q35 booted 12 of 12 (shared/HOST-NOTES.md).
const Machine = "q35"

// Driver is the QEMU driver.
type Driver struct {
	Binary      string // default qemu-system-x86_64, found on PATH
	KVMDevice   string // default /dev/kvm
	VsockDevice string // default /dev/vhost-vsock
	Machine     string // -machine type; empty means the Machine constant (q35)

	versionOnce sync.Once
	version     string
	versionErr  error
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver with the default paths.
func New() *Driver {
	return &Driver{Binary: "qemu-system-x86_64", KVMDevice: "/dev/kvm", VsockDevice: "/dev/vhost-vsock"}
}

func (d *Driver) Kind() string { return vmm.KindQEMU }

func (d *Driver) Probe(ctx context.Context) vmm.Info {
	info := vmm.Info{Kind: vmm.KindQEMU, Features: vmm.Features{QCOW2: true}}
	bin, err := exec.LookPath(d.Binary)
	if err != nil {
		info.Reason = fmt.Sprintf("%s not found (hint: apt-get install qemu-system-x86)", d.Binary)
		return info
	}
	info.Binary = bin
	d.versionOnce.Do(func() {
		out, err := exec.CommandContext(ctx, bin, "--version").Output()
		if err != nil {
			d.versionErr = err
			return
		}
		first, _, _ := strings.Cut(string(out), "\n")
		d.version = strings.TrimPrefix(first, "QEMU emulator version ")
	})
	if d.versionErr != nil {
		info.Reason = fmt.Sprintf("%s --version failed: %v", bin, d.versionErr)
		return info
	}
	info.Version = d.version
	info.Available = true
	if ok, why := system.KVMUsable(d.KVMDevice); ok {
		info.Accel = "kvm"
		info.Reason = "QEMU with KVM: " + why
	} else {
		info.Accel = "tcg"
		info.Reason = "QEMU with TCG software emulation (slow): " + why
	}
	if _, err := os.Stat(d.VsockDevice); err == nil {
		info.Features.Vsock = true
	}
	return info
}

func (d *Driver) Validate(spec vmm.Spec) error {
	switch {
	case spec.VCPUs < 1:
		return errdefs.InvalidArgument("vcpus %d: at least one is needed", spec.VCPUs)
	case spec.MemoryMiB < 64:
		return errdefs.InvalidArgument("memory %d MiB is too small for a Linux guest (hint: 64 MiB or more)", spec.MemoryMiB)
	case spec.Kernel == "" || spec.RootDisk == "" || spec.ControlSocket == "" || spec.LogPath == "":
		return errdefs.InvalidArgument("incomplete vm spec: kernel, root disk, control socket and log path are required")
	case spec.RootDiskFormat != "" && spec.RootDiskFormat != "raw" && spec.RootDiskFormat != "qcow2":
		return errdefs.InvalidArgument("root disk format %q: qemu opens raw or qcow2", spec.RootDiskFormat)
	}
	return checkGenerationID(spec.GenerationID)
}

// Args is the QEMU command line for spec with the given acceleration.
func (d *Driver) Args(spec vmm.Spec, accel string, vsock bool) []string {
	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	machine := cmp.Or(d.Machine, Machine)
	var memory []string
	if spec.MemoryFile != "" {
		// The RAM is the file: shared while a booted guest runs (its
		// writes land in the file, which a snapshot then keeps),
		// private when restoring (the snapshot's file, copy-on-write).
		// The backend is named as QEMU's default RAM ("pc.ram", not
		// "/objects/pc.ram"), so the migration stream names the same RAM
		// block as a VM without the file: snapshots go either way.
		share := "on"
		if spec.Restore != nil {
			share = "off"
		}
		machine += ",memory-backend=" + ramBackend
		memory = []string{"-object", "memory-backend-file,id=" + ramBackend + ",x-use-canonical-path-for-ramblock-id=off" +
			",size=" + strconv.Itoa(spec.MemoryMiB) + "M,mem-path=" + spec.MemoryFile + ",share=" + share}
	}
	args := []string{
		"-name", "guest=" + spec.Name,
		"-machine", machine, "-accel", accel, "-cpu", cpu,
		"-smp", strconv.Itoa(spec.VCPUs), "-m", strconv.Itoa(spec.MemoryMiB),
		"-nodefaults", "-no-user-config", "-display", "none",
		// A guest reboot (Ctrl-Alt-Del, panic) ends the process, as with Firecracker.
		"-no-reboot",
		// Paused until Boot: the VM is fully configured before it runs.
		"-S",
		"-qmp", "unix:" + spec.ControlSocket + ",server=on,wait=off",
		// The console goes to stdout, the VM log's capped writer (vmm.Spawn),
		// never straight to a file a guest could fill.
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		// A qcow2 overlay's backing file (the image) is opened read-only by
		// QEMU and never reopened writable: banger runs no block jobs.
		"-drive", "file=" + spec.RootDisk + ",if=none,id=root,format=" + cmp.Or(spec.RootDiskFormat, "raw") + ",discard=unmap",
		"-device", "virtio-blk-pci,drive=root",
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng",
	}
	args = append(args, memory...)
	if spec.ConfigDisk != "" {
		// After the root, so the root stays vda; read-only to the guest.
		args = append(args,
			"-drive", "file="+spec.ConfigDisk+",if=none,id=cfg,format=raw,readonly=on",
			"-device", "virtio-blk-pci,drive=cfg,serial=banger-config")
	}
	if spec.Restore == nil {
		// A restored guest is past its boot: QEMU need not read the
		// kernel (the snapshot's meta has checked it is the same one).
		args = append(args, "-kernel", spec.Kernel, "-append", strings.TrimSpace("console=ttyS0 "+spec.KernelArgs))
		if spec.Initrd != "" {
			args = append(args, "-initrd", spec.Initrd)
		}
	}
	if spec.Tap != "" {
		args = append(args,
			"-netdev", "tap,id=net0,ifname="+spec.Tap+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=net0,mac="+spec.MAC)
	}
	if vsock && spec.VsockCID >= 3 {
		args = append(args, "-device", "vhost-vsock-pci,guest-cid="+strconv.FormatUint(uint64(spec.VsockCID), 10))
	}
	if spec.AgentSocket != "" {
		args = append(args, agent.QEMUArgs(spec.AgentSocket)...)
	}
	args = append(args, vmgenidArgs(spec)...)
	if spec.Restore != nil {
		// The same devices as at save time (this function made both
		// command lines); the state comes from loadSnapshot.
		args = append(args, "-incoming", "defer")
	}
	return args
}

// Launch starts QEMU paused and returns once its QMP socket answers. On
// error no process is left.
func (d *Driver) Launch(ctx context.Context, spec vmm.Spec) (vmm.Process, error) {
	if err := d.Validate(spec); err != nil {
		return vmm.Process{}, err
	}
	info := d.Probe(ctx)
	if !info.Available {
		return vmm.Process{}, errdefs.FailedPrecondition("qemu: %s", info.Reason)
	}
	for _, p := range []string{spec.Kernel, spec.Initrd, spec.RootDisk, spec.ConfigDisk} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return vmm.Process{}, errdefs.FailedPrecondition("qemu: %w", err)
		}
	}
	if spec.Restore != nil {
		meta, err := d.restoreMeta(spec, info.Features.Vsock && spec.VsockCID >= 3)
		if err != nil {
			return vmm.Process{}, err
		}
		spec.MemoryFile = ""
		if meta.MemoryFile != "" {
			spec.MemoryFile = filepath.Join(spec.Restore.Dir, meta.MemoryFile)
		}
	} else if spec.MemoryFile != "" {
		// Made here with its mode set, not by QEMU under its umask: it
		// holds the guest's memory.
		f, err := os.OpenFile(spec.MemoryFile, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return vmm.Process{}, fmt.Errorf("qemu: guest ram file: %w", err)
		}
		if err := f.Close(); err != nil {
			return vmm.Process{}, fmt.Errorf("qemu: guest ram file: %w", err)
		}
	}
	proc, err := vmm.SpawnFor(spec, info.Binary, d.Args(spec, info.Accel, info.Features.Vsock))
	if err != nil {
		return vmm.Process{}, err
	}
	if err := vmm.WaitSocket(ctx, spec.ControlSocket, proc, vmm.SocketTimeout); err != nil {
		return vmm.Process{}, errors.Join(fmt.Errorf("qemu: %w", err), vmm.Kill(context.WithoutCancel(ctx), proc))
	}
	if _, err := d.run(ctx, spec, "query-status", nil); err != nil {
		return vmm.Process{}, errors.Join(fmt.Errorf("qemu: %w", err), vmm.Kill(context.WithoutCancel(ctx), proc))
	}
	if spec.AgentSocket != "" {
		// QEMU made it (before QMP answered) under its umask: root's only.
		if err := os.Chmod(spec.AgentSocket, 0o600); err != nil {
			return vmm.Process{}, errors.Join(fmt.Errorf("qemu: guest agent socket: %w", err), vmm.Kill(context.WithoutCancel(ctx), proc))
		}
	}
	if spec.Restore != nil {
		if err := d.loadSnapshot(ctx, spec); err != nil {
			return vmm.Process{}, errors.Join(fmt.Errorf("qemu: %w", err), vmm.Kill(context.WithoutCancel(ctx), proc))
		}
	}
	return proc, nil
}

// Boot resumes the paused VM: it starts booting, or, restored from a
// snapshot, goes on from the snapshot's instant.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) error {
	if _, err := d.run(ctx, spec, "cont", nil); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// Shutdown presses Ctrl-Alt-Del on the guest's keyboard, exactly what
// Firecracker's SendCtrlAltDel does; with -no-reboot the guest's reboot
// then ends QEMU.
func (d *Driver) Shutdown(ctx context.Context, spec vmm.Spec) error {
	keys := map[string]any{"keys": []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"},
	}}
	if _, err := d.run(ctx, spec, "send-key", keys); err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// Cleanup removes the QMP socket, the guest agent's socket and the guest's
// RAM file (a booted VM's; a restored VM maps its snapshot's, which is not
// in its spec).
func (d *Driver) Cleanup(_ context.Context, spec vmm.Spec) error {
	if spec.MemoryFile != "" && spec.Restore == nil {
		if err := os.Remove(spec.MemoryFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("qemu: remove guest ram file: %w", err)
		}
	}
	if spec.ControlSocket != "" {
		if err := os.Remove(spec.ControlSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("qemu: remove qmp socket: %w", err)
		}
	}
	if spec.AgentSocket != "" {
		if err := os.Remove(spec.AgentSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("qemu: remove guest agent socket: %w", err)
		}
	}
	return nil
}

// qmpTimeout bounds one QMP exchange.
const qmpTimeout = 10 * time.Second

// run connects to the VM's QMP socket, runs one command and disconnects.
func (d *Driver) run(ctx context.Context, spec vmm.Spec, command string, args any) (json.RawMessage, error) {
	mon, err := qmp.NewSocketMonitor("unix", spec.ControlSocket, qmpTimeout)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		if err := mon.Connect(); err != nil {
			done <- result{err: err}
			return
		}
		cmd, err := json.Marshal(qmp.Command{Execute: command, Args: args})
		if err != nil {
			done <- result{err: err}
			return
		}
		out, err := mon.Run(cmd)
		done <- result{out, err}
	}()
	ctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	select {
	case r := <-done:
		_ = mon.Disconnect() // the command's outcome is known; closing cannot change it
		if r.err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, r.err)
		}
		return r.out, nil
	case <-ctx.Done():
		_ = mon.Disconnect() // unblocks the goroutine
		return nil, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}
