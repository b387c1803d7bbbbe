package qemu_test

import (
	"strings"
	"testing"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// TestRootDiskFormat: the -drive names the spec's format (raw by default),
// and a format QEMU is not given by banger is refused.
func TestRootDiskFormat(t *testing.T) {
	d := qemu.New()
	if !d.Probe(t.Context()).Features.QCOW2 {
		t.Fatal("the qemu driver must report that it opens qcow2 disks")
	}
	spec := vmm.Spec{VCPUs: 1, MemoryMiB: 256, Kernel: "k", RootDisk: "/vms/a/rootfs.qcow2", ControlSocket: "s", LogPath: "l"}
	for format, want := range map[string]string{"": "format=raw", "raw": "format=raw", "qcow2": "format=qcow2"} {
		spec.RootDiskFormat = format
		if err := d.Validate(spec); err != nil {
			t.Fatalf("format %q: %v", format, err)
		}
		args := strings.Join(d.Args(spec, "tcg", false), " ")
		if !strings.Contains(args, "-drive file=/vms/a/rootfs.qcow2,if=none,id=root,"+want+",") {
			t.Fatalf("format %q: args %s, want %s on the root drive", format, args, want)
		}
	}
	spec.RootDiskFormat = "vmdk"
	if err := d.Validate(spec); errdefs.ClassOf(err) != errdefs.ClassInvalidArgument {
		t.Fatalf("vmdk: %v, want invalid argument", err)
	}
}

// TestConfigDiskDrive: the config disk is a second drive after the root
// (which stays vda), read-only, with banger's serial.
func TestConfigDiskDrive(t *testing.T) {
	spec := vmm.Spec{VCPUs: 1, MemoryMiB: 256, Kernel: "k", RootDisk: "/vms/a/rootfs.qcow2", RootDiskFormat: "qcow2", ConfigDisk: "/vms/a/config.disk", ControlSocket: "s", LogPath: "l"}
	args := strings.Join(qemu.New().Args(spec, "tcg", false), " ")
	root := strings.Index(args, "-device virtio-blk-pci,drive=root")
	cfg := strings.Index(args, "-drive file=/vms/a/config.disk,if=none,id=cfg,format=raw,readonly=on -device virtio-blk-pci,drive=cfg,serial=banger-config")
	if root < 0 || cfg < root {
		t.Fatalf("args %s: want the read-only config drive after the root", args)
	}
	spec.ConfigDisk = ""
	if args := strings.Join(qemu.New().Args(spec, "tcg", false), " "); strings.Contains(args, "id=cfg") {
		t.Fatalf("a config drive without a config disk: %s", args)
	}
}

// TestMemoryFileArgs: a booted VM with a RAM file maps it shared, under
// QEMU's own RAM name; a restore maps the snapshot's privately and does not
// load the kernel; a VM without a file has QEMU's default RAM.
func TestMemoryFileArgs(t *testing.T) {
	d := qemu.New()
	spec := vmm.Spec{VCPUs: 1, MemoryMiB: 256, Kernel: "/img/vmlinuz", Initrd: "/img/initrd", RootDisk: "/vms/a/rootfs.qcow2", ControlSocket: "s", LogPath: "l"}
	args := strings.Join(d.Args(spec, "tcg", false), " ")
	if strings.Contains(args, "memory-backend") || !strings.Contains(args, "-kernel /img/vmlinuz") || !strings.Contains(args, "-initrd /img/initrd") {
		t.Fatalf("plain boot: %s", args)
	}
	spec.MemoryFile = "/vms/a/memory.ram"
	args = strings.Join(d.Args(spec, "tcg", false), " ")
	for _, want := range []string{
		"-machine q35,memory-backend=pc.ram ",
		"-object memory-backend-file,id=pc.ram,x-use-canonical-path-for-ramblock-id=off,size=256M,mem-path=/vms/a/memory.ram,share=on",
		"-kernel /img/vmlinuz",
	} {
		if !strings.Contains(args, want) {
			t.Fatalf("boot with a ram file: args %s, want %q", args, want)
		}
	}
	spec.MemoryFile = "/snap/memory.ram"
	spec.Restore = &vmm.RestoreSpec{Dir: "/snap"}
	args = strings.Join(d.Args(spec, "tcg", false), " ")
	if !strings.Contains(args, "mem-path=/snap/memory.ram,share=off") || strings.Contains(args, "-kernel") || strings.Contains(args, "-initrd") {
		t.Fatalf("restore with a ram file: %s", args)
	}
}
