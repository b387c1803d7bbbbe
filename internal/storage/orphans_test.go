package storage_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/storage/storagetest"
	"github.com/banger-vm/banger/internal/testutil"
)

// TestOrphansFoundAndRemoved leaves, as a crash would, a loop device of a
// COW file of a VM nobody owns, one of an owned VM, and a qcow2 grow view
// still mounted; FindOrphans must name exactly the unowned loop and the
// mount, and RemoveOrphans must leave nothing.
func TestOrphansFoundAndRemoved(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "losetup", "qemu-img", "qemu-storage-daemon", "mkfs.ext4")
	ctx := context.Background()
	dir := t.TempDir()
	s := storage.Scope{VMsDir: filepath.Join(dir, "vms"), ImagesDir: filepath.Join(dir, "images")}
	t.Cleanup(func() { storagetest.Leaks(t, dir) })
	loopOf := func(vm string) string {
		p := filepath.Join(s.VMsDir, vm, "root.cow")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("losetup", "--find", "--show", p).Output()
		if err != nil {
			t.Fatal(err)
		}
		dev := strings.TrimSpace(string(out))
		// Fails once RemoveOrphans has detached it; Leaks checks what is left.
		t.Cleanup(func() { _ = exec.Command("losetup", "--detach", dev).Run() })
		return dev
	}
	gone := loopOf("deadbeef-gone")
	kept := loopOf("cafe0000-kept")

	// A crashed qcow2 grow: the daemon and its FUSE mount are still there.
	img := filepath.Join(s.ImagesDir, "i", "rootfs.ext4")
	if err := os.MkdirAll(filepath.Dir(img), 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	overlay := filepath.Join(s.VMsDir, "cafe0000-kept", "root.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", img, overlay, "32M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	view := overlay + ".grow-view"
	if err := os.WriteFile(view, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-storage-daemon", "--blockdev", "driver=file,node-name=file0,filename="+overlay,
		"--blockdev", "driver=qcow2,node-name=disk0,file=file0",
		"--export", "type=fuse,id=grow0,node-name=disk0,mountpoint="+view+",writable=on",
		"--pidfile", overlay+".grow-pid", "--daemonize").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() { (&storage.QCOW2{}).Remove(ctx, storage.Disk{Path: overlay}) })

	orphans, err := storage.FindOrphans(ctx, storage.Options{}, s, []string{"cafe0000-kept"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, o := range orphans {
		got[o.Kind+" "+o.Name] = true
	}
	want := map[string]bool{"loop-device " + gone: true, "grow-mount " + view: true}
	if len(got) != len(want) || !got["loop-device "+gone] || !got["grow-mount "+view] {
		t.Fatalf("orphans %v, want %v (the owned VM's %s is not one)", orphans, want, kept)
	}
	if err := storage.RemoveOrphans(ctx, storage.Options{}, orphans); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME").Output()
	if strings.Contains(string(out), gone+"\n") {
		t.Fatalf("orphan %s still attached", gone)
	}
	if !strings.Contains(string(out), kept+"\n") {
		t.Fatalf("the owned VM's %s was detached", kept)
	}
	if _, err := os.Stat(view); !os.IsNotExist(err) {
		t.Fatalf("grow view left: %v", err)
	}
	if again, _ := storage.FindOrphans(ctx, storage.Options{}, s, []string{"cafe0000-kept"}); len(again) != 0 {
		t.Fatalf("orphans after removal: %v", again)
	}
	if err := exec.Command("losetup", "--detach", kept).Run(); err != nil {
		t.Fatal(err)
	}
}

// TestQCOW2GrownLayerReusedAndCleaned: the second disk of a size reuses
// the grown layer made for the first; a layer whose image is gone is an
// orphan; RemoveImageLayers deletes an image's layers.
func TestQCOW2GrownLayerReusedAndCleaned(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTools(t, "qemu-storage-daemon", "mkfs.ext4", "e2fsck", "resize2fs")
	ctx := context.Background()
	dir := t.TempDir()
	s := storage.Scope{VMsDir: filepath.Join(dir, "vms"), ImagesDir: filepath.Join(dir, "images"), CacheDir: filepath.Join(dir, "cache")}
	o := storage.Options{CacheDir: s.CacheDir}
	img := filepath.Join(s.ImagesDir, "rootfs.ext4")
	if err := os.MkdirAll(s.ImagesDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(s.VMsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	b, _ := storage.New(storage.KindQCOW2, o)
	var layerIno []uint64
	for _, vm := range []string{"a", "b"} {
		d := storage.Disk{VMID: vm, Image: img, Path: filepath.Join(s.VMsDir, vm+".qcow2"), Size: 96 << 20}
		if err := b.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
		h, err := storage.ReadQCOW2Header(d.Path)
		if err != nil || h.BackingFormat != "qcow2" || !strings.HasPrefix(h.BackingFile, s.CacheDir+"/grown-") {
			t.Fatalf("overlay of %s: %+v %v", vm, h, err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(h.BackingFile, &st); err != nil {
			t.Fatal(err)
		}
		layerIno = append(layerIno, st.Ino)
		if _, err := b.Attach(ctx, d); err != nil {
			t.Fatalf("attach over the grown layer: %v", err)
		}
	}
	if layerIno[0] != layerIno[1] {
		t.Fatal("the second disk of a size made a new grown layer")
	}
	if orphans, err := storage.FindOrphans(ctx, o, s, []string{"a", "b"}); err != nil || len(orphans) != 0 {
		t.Fatalf("orphans while the image exists: %v %v", orphans, err)
	}
	if err := os.Rename(img, img+".moved"); err != nil {
		t.Fatal(err)
	}
	orphans, err := storage.FindOrphans(ctx, o, s, nil)
	if err != nil || len(orphans) != 1 || orphans[0].Kind != "grown-layer" {
		t.Fatalf("orphans once the image is gone: %v %v", orphans, err)
	}
	if err := os.Rename(img+".moved", img); err != nil {
		t.Fatal(err)
	}
	if err := storage.RemoveImageLayers(o, img); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(s.CacheDir, "*")); len(left) != 0 {
		t.Fatalf("RemoveImageLayers left %v", left)
	}
}
