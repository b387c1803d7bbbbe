package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/vmm"
)

// withHost fixes what the service found of the host's storage (a probe
// runs once: this one replaces it) and whether its driver opens qcow2.
func (e *env) withHost(h storage.Host, qcow2 bool) {
	e.t.Helper()
	e.svc.disk.once.Do(func() {})
	e.svc.disk.host = h
	e.fake.Info.Features.QCOW2 = qcow2
	e.svc.probes.remember(e.fake.Info)
}

var qemuImgHost = storage.Host{QemuImg: true, QemuImgWhy: "qemu-img at /usr/bin/qemu-img",
	ReflinkWhy: "ext4 under /x has no reflink", DMWhy: "device-mapper is absent"}

func (e *env) diskCreateStage(ref string) model.Stage {
	e.t.Helper()
	ops, err := e.svc.Operations(context.Background(), ref, 10)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, op := range ops {
		if op.Kind != "vm.create" {
			continue
		}
		for _, st := range op.Stages {
			if st.Name == StepDiskCreate && st.Status == StatusDone {
				return st
			}
		}
	}
	e.t.Fatalf("no disk.create stage done in %+v", ops)
	return model.Stage{}
}

// TestQCOW2DiskFromCreateToDelete: auto picks qcow2 for a driver that
// opens it on a host without reflink; the choice and why are recorded and
// journalled; start hands the VMM the overlay as qcow2; delete removes it.
func TestQCOW2DiskFromCreateToDelete(t *testing.T) {
	e := newEnv(t)
	e.withHost(qemuImgHost, true)
	var launched vmm.Spec
	e.fake.OnLaunch = func(_ context.Context, s vmm.Spec) error { launched = s; return nil }
	v := e.started("web")
	if v.DiskStrategy != "qcow2" || !strings.HasPrefix(v.DiskReason, "auto: ") || !strings.Contains(v.DiskReason, "reflink: ext4 under /x has no reflink") {
		t.Fatalf("recorded %q (%q)", v.DiskStrategy, v.DiskReason)
	}
	if got := e.get("web"); got.DiskStrategy != "qcow2" || got.DiskReason != v.DiskReason {
		t.Fatalf("stored %q (%q)", got.DiskStrategy, got.DiskReason)
	}
	if st := e.diskCreateStage("web"); st.Detail != "qcow2: "+v.DiskReason {
		t.Fatalf("disk.create detail %q", st.Detail)
	}
	overlay := filepath.Join(v.VMDir, "rootfs.qcow2")
	img, err := e.st.ResolveImage(context.Background(), v.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	h, err := storage.ReadQCOW2Header(overlay)
	if err != nil || h.BackingFile != img.RootfsPath || h.BackingFormat != "raw" {
		t.Fatalf("overlay header %+v %v, want backed by %s (raw)", h, err, img.RootfsPath)
	}
	if exists(filepath.Join(v.VMDir, "rootfs.ext4")) {
		t.Fatal("a qcow2 vm also got a raw copy")
	}
	if launched.RootDisk != overlay || launched.RootDiskFormat != "qcow2" {
		t.Fatalf("the vmm was given %s (%s), want %s (qcow2)", launched.RootDisk, launched.RootDiskFormat, overlay)
	}
	if err := e.svc.DeleteVM(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	if exists(overlay) || exists(v.VMDir) {
		t.Fatal("the overlay outlived its vm")
	}
}

// TestSparseCopyDiskIsRawAndAsked: an explicit strategy is recorded as
// asked for, and the VMM opens a raw copy.
func TestSparseCopyDiskIsRawAndAsked(t *testing.T) {
	e := newEnv(t)
	e.withHost(qemuImgHost, true)
	var launched vmm.Spec
	e.fake.OnLaunch = func(_ context.Context, s vmm.Spec) error { launched = s; return nil }
	v, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, DiskStrategy: "sparse-copy", Start: true})
	if err != nil {
		t.Fatal(err)
	}
	if v.DiskStrategy != "sparse-copy" || !strings.HasPrefix(v.DiskReason, "asked for: ") {
		t.Fatalf("recorded %q (%q)", v.DiskStrategy, v.DiskReason)
	}
	if want := filepath.Join(v.VMDir, "rootfs.ext4"); launched.RootDisk != want || launched.RootDiskFormat != "raw" {
		t.Fatalf("the vmm was given %s (%s), want %s (raw)", launched.RootDisk, launched.RootDiskFormat, want)
	}
}

// TestDiskStrategyDefaultsToTheDaemons: a create without a strategy takes
// the daemon's --disk-strategy.
func TestDiskStrategyDefaultsToTheDaemons(t *testing.T) {
	e := newEnv(t)
	e.withHost(qemuImgHost, true)
	e.svc.cfg.DiskStrategy = "sparse-copy"
	if v := e.create("web"); v.DiskStrategy != "sparse-copy" {
		t.Fatalf("recorded %q, want the daemon's sparse-copy", v.DiskStrategy)
	}
	if _, err := New(Config{Layout: e.layout, Drivers: e.svc.cfg.Drivers, DiskStrategy: "zfs"}, e.st); errdefs.ClassOf(err) != errdefs.ClassInvalidArgument || !strings.Contains(err.Error(), `"zfs"`) {
		t.Fatalf("daemon --disk-strategy zfs: %v", err)
	}
}

// TestDiskStrategyThatCannotRunHereIsRefused: with the reason, before
// anything is made.
func TestDiskStrategyThatCannotRunHereIsRefused(t *testing.T) {
	e := newEnv(t)
	e.withHost(qemuImgHost, false) // a driver like Firecracker: raw only
	cases := []struct {
		strategy string
		class    errdefs.Class
		says     string
	}{
		{"qcow2", errdefs.ClassFailedPrecondition, "cannot open a qcow2 disk"},
		{"dm-snapshot", errdefs.ClassFailedPrecondition, "device-mapper is absent"},
		{"reflink", errdefs.ClassFailedPrecondition, "has no reflink"},
		{"zfs", errdefs.ClassInvalidArgument, `unknown disk strategy "zfs"`},
	}
	for _, c := range cases {
		_, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, DiskStrategy: c.strategy})
		if errdefs.ClassOf(err) != c.class || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want %s saying %q", c.strategy, err, c.class, c.says)
		}
		e.assertNothingCreated()
	}
}

// TestAutoKeepsARawDiskForAnImageTakingIdentityByDebugfs: such an image
// gets its host key pinned before the first boot only on a raw disk, so
// auto passes over qcow2 (and dm-snapshot), saying why; an explicit qcow2
// is honoured, and the identity step says ssh will trust on first use.
func TestAutoKeepsARawDiskForAnImageTakingIdentityByDebugfs(t *testing.T) {
	e := newEnv(t)
	e.withHost(storage.Host{QemuImg: true, QemuImgWhy: "qemu-img", DM: true, DMWhy: "dm here"}, true)
	e.svc.cfg.ClientKey = "ssh-ed25519 AAAA test"
	img, err := e.st.ResolveImage(context.Background(), DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	e.svc.disk.rawIdentity.Store(img.ID, true) // what guest.CanApplyIdentity says of a banger image
	v := e.create("web")
	if v.DiskStrategy != "sparse-copy" || !strings.Contains(v.DiskReason, "only on a raw disk at create") {
		t.Fatalf("auto chose %q (%q), want sparse-copy for identity", v.DiskStrategy, v.DiskReason)
	}
	q, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "q", VCPUs: 1, MemoryMiB: 128, DiskStrategy: "qcow2"})
	if err != nil || q.DiskStrategy != "qcow2" {
		t.Fatalf("explicit qcow2: %v %+v", err, q)
	}
	op, _ := e.lastOp("q")
	var note string
	for _, st := range op.Stages {
		if st.Name == StepGuestIdentity && st.Status == StatusNote {
			note = st.Detail
		}
	}
	if !strings.Contains(note, "trust the guest's host key on first use") || q.HostKey != "" {
		t.Fatalf("identity note %q, host key %q", note, q.HostKey)
	}
}

// TestImagesAreReadOnly: an imported image's files are 0444, and an image
// made writable again is sealed at the next daemon start.
func TestImagesAreReadOnly(t *testing.T) {
	e := newEnv(t)
	img, err := e.st.ResolveImage(context.Background(), DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{img.RootfsPath, img.KernelPath} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o444 {
			t.Fatalf("%s: %v %v, want mode 0444", p, fi.Mode(), err)
		}
	}
	if err := os.Chmod(img.RootfsPath, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Startup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(img.RootfsPath); err != nil || fi.Mode().Perm() != 0o444 {
		t.Fatalf("after startup: %v %v, want mode 0444", fi.Mode(), err)
	}
}

// TestCloneDiskCopiesTheVMsContent: the snapshot helper's clone is a disk
// of the same strategy holding what the VM wrote.
func TestCloneDiskCopiesTheVMsContent(t *testing.T) {
	e := newEnv(t)
	e.withHost(qemuImgHost, true)
	v, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, DiskStrategy: "sparse-copy"})
	if err != nil {
		t.Fatal(err)
	}
	disk := e.svc.diskPath(v)
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("written by the vm"), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dst := filepath.Join(t.TempDir(), "clone.ext4")
	if err := e.svc.cloneDisk(context.Background(), v, dst); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dst)
	if err != nil || len(b) < 4096+17 || string(b[4096:4096+17]) != "written by the vm" {
		t.Fatalf("clone lacks the vm's write: %v", err)
	}
}

// TestConfigDiskIdentityForEveryStrategy: an image whose initramfs applies
// config disks gets its identity as a read-only second disk under qcow2
// too (so auto is free to pick qcow2), with the host key pinned at create.
func TestConfigDiskIdentityForEveryStrategy(t *testing.T) {
	e := newEnv(t)
	e.withHost(qemuImgHost, true)
	e.svc.cfg.ClientKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcNk0vF2bD6u4fMvY8vKzE5h7gYw0TQy3m3C7gk6u6d test"
	def, err := e.st.ResolveImage(context.Background(), DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	built := *def
	built.ID, built.Name = "b0b0b0b0b0b0", "built"
	built.Manifest = []byte(`{"format_version":1,"initramfs_features":["config-disk"]}`)
	if err := e.st.InsertImage(context.Background(), &built); err != nil {
		t.Fatal(err)
	}
	// What identity.ReadImage finds in a banger image (the fake root has no
	// files for debugfs to read).
	e.svc.disk.facts.Store(built.ID, identity.ImageFacts{User: "banger", UID: 1000, GID: 1000, Home: "/home/banger"})
	var launched vmm.Spec
	e.fake.OnLaunch = func(_ context.Context, s vmm.Spec) error { launched = s; return nil }
	v, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", Image: "built", VCPUs: 1, MemoryMiB: 128, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	if v.DiskStrategy != "qcow2" {
		t.Fatalf("auto chose %q (%q): a config-disk image needs no raw disk", v.DiskStrategy, v.DiskReason)
	}
	cfg := filepath.Join(v.VMDir, "config.disk")
	fi, err := os.Stat(cfg)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config disk: %v %v, want mode 0600 (it holds host keys)", fi, err)
	}
	b, _ := os.ReadFile(cfg)
	if !strings.HasPrefix(string(b), identity.ConfigDiskMagic) {
		t.Fatal("config disk lacks its magic")
	}
	if v.HostKey == "" {
		t.Fatal("no host key pinned at create")
	}
	if pins, _ := os.ReadFile(e.layout.KnownHosts()); !strings.Contains(string(pins), strings.Fields(v.HostKey)[1]) {
		t.Fatal("the host key is not in banger's known_hosts")
	}
	if launched.ConfigDisk != cfg || launched.RootDiskFormat != "qcow2" {
		t.Fatalf("the vmm was given config disk %q (root %s)", launched.ConfigDisk, launched.RootDiskFormat)
	}
}
