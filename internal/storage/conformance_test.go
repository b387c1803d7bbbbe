package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/storage/storagetest"
	"github.com/banger-vm/banger/internal/testutil"
)

func backend(t *testing.T, k storage.Kind) storage.Backend {
	t.Helper()
	b, err := storage.New(k, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformanceSparseCopy(t *testing.T) {
	storagetest.Run(t, backend(t, storage.KindSparseCopy), t.TempDir())
}

func TestConformanceQCOW2(t *testing.T) {
	storagetest.Run(t, backend(t, storage.KindQCOW2), t.TempDir())
}

func TestConformanceReflink(t *testing.T) {
	testutil.RequireRoot(t)
	storagetest.Run(t, backend(t, storage.KindReflink), storagetest.XFS(t))
}

// TestConformanceDMSnapshot runs on a host with device-mapper (this build
// machine has none): opted in there, any failure fails.
func TestConformanceDMSnapshot(t *testing.T) {
	if !testutil.OptedIn() {
		t.Skipf("needs root and device-mapper: set %s=1 to run", testutil.EnvVMTests)
	}
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		t.Skipf("device-mapper is absent on this host (%v): the dm-snapshot commands are checked by the unit tests only", err)
	}
	testutil.RequireTools(t, "dmsetup", "losetup")
	storagetest.Run(t, backend(t, storage.KindDMSnapshot), t.TempDir())
}

func TestProbeFindsReflinkOnXFS(t *testing.T) {
	dir := storagetest.XFS(t)
	h := storage.Probe(context.Background(), dir)
	if !h.Reflink || !strings.Contains(h.ReflinkWhy, "xfs") {
		t.Fatalf("reflink on xfs probed as %v: %s", h.Reflink, h.ReflinkWhy)
	}
	k, why, err := storage.Choose(storage.KindAuto, storage.Need{VMM: "firecracker"}, h)
	if err != nil || k != storage.KindReflink {
		t.Fatalf("auto on xfs for firecracker: %q %q %v", k, why, err)
	}
}

// TestConformanceQCOW2Cached runs the suite with grown layers cached: a
// disk larger than its image is an overlay over a read-only grown layer.
func TestConformanceQCOW2Cached(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache")
	b, err := storage.New(storage.KindQCOW2, storage.Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	storagetest.Run(t, b, dir)
	layers, _ := filepath.Glob(filepath.Join(cache, "grown-*"))
	if len(layers) != 2 { // 3x and 2x the image, each made once
		t.Fatalf("grown layers %v, want one per disk size", layers)
	}
	for _, l := range layers {
		if fi, err := os.Stat(l); err != nil || fi.Mode().Perm() != 0o444 {
			t.Fatalf("grown layer %s: %v %v, want mode 0444", l, fi, err)
		}
	}
}

// TestConformanceReflinkCached runs the suite with grown clones cached on
// the same XFS: a disk larger than its image is a clone of a grown clone.
func TestConformanceReflinkCached(t *testing.T) {
	testutil.RequireRoot(t)
	fs := storagetest.XFS(t)
	cache := filepath.Join(fs, "cache")
	b, err := storage.New(storage.KindReflink, storage.Options{CacheDir: cache})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(fs, "suite")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	storagetest.Run(t, b, dir)
	layers, _ := filepath.Glob(filepath.Join(cache, "grown-*"))
	if len(layers) != 2 {
		t.Fatalf("grown clones %v, want one per disk size", layers)
	}
	for _, l := range layers {
		if fi, err := os.Stat(l); err != nil || fi.Mode().Perm() != 0o444 {
			t.Fatalf("grown clone %s: %v %v, want mode 0444", l, fi, err)
		}
	}
	ctx := context.Background()
	// The suite's image still exists: its clones, which name it in an
	// xattr, are no orphans; deleting the image deletes them.
	orphans, err := storage.FindOrphans(ctx, storage.Options{}, storage.Scope{CacheDir: cache}, nil)
	if err != nil || len(orphans) != 0 {
		t.Fatalf("grown clones of an existing image: orphans %v %v", orphans, err)
	}
	if err := storage.RemoveImageLayers(storage.Options{CacheDir: cache}, filepath.Join(dir, "images", "rootfs.ext4")); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(cache, "*")); len(left) != 0 {
		t.Fatalf("left %v", left)
	}
}
