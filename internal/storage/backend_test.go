package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/errdefs"
)

func TestNewAndFileNames(t *testing.T) {
	for _, k := range Kinds {
		b, err := New(k, Options{})
		if err != nil || b.Kind() != k {
			t.Fatalf("New(%q) = %v, %v", k, b, err)
		}
	}
	if _, err := New(KindAuto, Options{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("New(auto): %v", err)
	}
	names := map[string]bool{}
	for _, k := range []Kind{KindQCOW2, KindDMSnapshot, KindSparseCopy} {
		names[FileName(k)] = true
	}
	if len(names) != 3 || FileName(KindReflink) != FileName(KindSparseCopy) {
		t.Fatalf("file names %v", names)
	}
}

func TestFileBackendsRefuseBadInput(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	for _, k := range []Kind{KindSparseCopy, KindReflink, KindQCOW2} {
		b, _ := New(k, Options{})
		missing := Disk{VMID: "v", Image: filepath.Join(dir, "img"), Path: filepath.Join(dir, "missing"), Size: 1 << 20}
		if _, err := b.Attach(ctx, missing); err == nil {
			t.Errorf("%s: attach of a missing disk succeeded", k)
		}
		if err := b.Remove(ctx, missing); err != nil {
			t.Errorf("%s: remove of a missing disk: %v", k, err)
		}
		if err := b.Create(ctx, Disk{VMID: "v", Image: dir, Path: filepath.Join(dir, "d"), Size: 1 << 20}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: a directory as image: %v", k, err)
		}
		if err := b.Create(ctx, missing); err == nil {
			t.Errorf("%s: create from a missing image succeeded", k)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("%s: refused creates left %v", k, ents)
		}
	}
	if _, err := (&CopyDisk{}).Attach(ctx, Disk{Path: filepath.Join(dir, "x")}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("attach of a missing disk: %v, want not found", err)
	}
}
