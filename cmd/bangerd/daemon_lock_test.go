package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
)

// One daemon per state dir: a second one gets a Conflict naming the dir,
// and gets the lock once the first lets go. The lock file is 0600 even when
// an older one was not.
func TestLockStateDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	l := layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.LockFile(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(l.LockFile(), 0o644); err != nil {
		t.Fatal(err)
	}
	unlock, err := lockStateDir(l)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(l.LockFile()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v %v, want mode 0600", fi.Mode(), err)
	}
	_, err = lockStateDir(l)
	if errdefs.ClassOf(err) != errdefs.ClassConflict {
		t.Fatalf("second daemon: %v (class %s), want a conflict", err, errdefs.ClassOf(err))
	}
	unlock()
	unlock2, err := lockStateDir(l)
	if err != nil {
		t.Fatalf("lock after the first daemon let go: %v", err)
	}
	unlock2()
}
