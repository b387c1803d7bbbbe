package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// tree writes a small tree with distinct modes under dir.
func tree(t *testing.T, dir string) {
	t.Helper()
	big := make([]byte, 1<<20+17)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		mode fs.FileMode
		data []byte
	}{
		{"big.bin", 0o644, big},
		{"run.sh", 0o755, []byte("#!/bin/sh\necho hi\n")},
		{"secret", 0o600, []byte("s3cret")},
		{"sub/deeper/note", 0o640, []byte("note")},
		{"empty", 0o444, nil},
	} {
		p := filepath.Join(dir, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "sub"), 0o710); err != nil {
		t.Fatal(err)
	}
}

type entry struct {
	mode fs.FileMode
	sum  [32]byte
}

func snapshot(t *testing.T, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{mode: fi.Mode()}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.sum = sha256.Sum256(b)
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what string, want, got map[string]entry) {
	t.Helper()
	if len(want) != len(got) {
		t.Errorf("%s: %d entries, want %d", what, len(got), len(want))
	}
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("%s: %s missing", what, p)
		case p != "." && g.mode != w.mode:
			t.Errorf("%s: %s mode %v, want %v", what, p, g.mode, w.mode)
		case !bytes.Equal(g.sum[:], w.sum[:]):
			t.Errorf("%s: %s content differs", what, p)
		}
	}
}

// Round trip through the agent's sftp: host -> guest -> host, checksums
// and modes kept at each step. (The "guest" here is the test's own file
// system, served by the in-process agent.)
func TestCopyRoundTrip(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	src, guestDir, back := t.TempDir(), t.TempDir(), t.TempDir()
	tree(t, src)
	want := snapshot(t, src)

	if err := c.CopyTo(testCtx(t), src, filepath.Join(guestDir, "copy")); err != nil {
		t.Fatal(err)
	}
	sameTree(t, "in the guest", want, snapshot(t, filepath.Join(guestDir, "copy")))

	if err := c.CopyFrom(testCtx(t), filepath.Join(guestDir, "copy"), filepath.Join(back, "copy")); err != nil {
		t.Fatal(err)
	}
	sameTree(t, "back on the host", want, snapshot(t, filepath.Join(back, "copy")))
}
