package guest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
)

// makeTree builds a directory tree with varied modes, a large file, an
// empty file, an empty directory, a read-only directory and a symlink.
func makeTree(t *testing.T, root string) {
	t.Helper()
	big := make([]byte, 3<<20+17)
	rand.Read(big)
	files := []struct {
		path string
		data []byte
		mode fs.FileMode
	}{
		{"a.txt", []byte("hello\n"), 0o644},
		{"run.sh", []byte("#!/bin/sh\necho hi\n"), 0o755},
		{"secret", []byte("s3cret"), 0o600},
		{"empty", nil, 0o640},
		{"sub/big.bin", big, 0o644},
		{"sub/deeper/x y 'z'", []byte("odd name"), 0o604},
		{"ro/inside", []byte("in a read-only dir"), 0o444},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
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
	for _, d := range []string{"emptydir"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../a.txt", filepath.Join(root, "sub", "link")); err != nil {
		t.Fatal(err)
	}
	for d, mode := range map[string]fs.FileMode{"sub/deeper": 0o750, "ro": 0o555, "emptydir": 0o711} {
		if err := os.Chmod(filepath.Join(root, d), mode); err != nil {
			t.Fatal(err)
		}
	}
	// Make the tree's directories writable again before TempDir removes it.
	t.Cleanup(func() {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}

// treeSums describes every entry under root: type, mode, sha256 or link target.
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			desc += " " + hex.EncodeToString(sum[:])
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc += " -> " + target
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func compareTrees(t *testing.T, want, got map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: got %q, want %q", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s", k)
		}
	}
}

func TestCopyRoundTrip(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The test "guest" is this host: remote paths are host paths.
	src := filepath.Join(t.TempDir(), "tree")
	makeTree(t, src)
	want := treeSums(t, src)

	guestDir := t.TempDir()
	remote := filepath.Join(guestDir, "copied")
	if err := CopyTo(ctx, c, src, remote); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, want, treeSums(t, remote))
	t.Cleanup(func() { os.Chmod(filepath.Join(remote, "ro"), 0o755) })

	back := filepath.Join(t.TempDir(), "back")
	if err := CopyFrom(ctx, c, remote, back); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, want, treeSums(t, back))
	t.Cleanup(func() { os.Chmod(filepath.Join(back, "ro"), 0o755) })

	// Copying into an existing directory puts the copy inside it, like cp.
	into := t.TempDir()
	if err := CopyFrom(ctx, c, remote, into); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, want, treeSums(t, filepath.Join(into, "copied")))
	t.Cleanup(func() { os.Chmod(filepath.Join(into, "copied", "ro"), 0o755) })

	// A single file, both ways, overwriting an existing one.
	one := filepath.Join(src, "run.sh")
	if err := os.WriteFile(filepath.Join(guestDir, "run.sh"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CopyTo(ctx, c, one, guestDir); err != nil {
		t.Fatal(err)
	}
	localOne := filepath.Join(t.TempDir(), "fetched.sh")
	if err := CopyFrom(ctx, c, filepath.Join(guestDir, "run.sh"), localOne); err != nil {
		t.Fatal(err)
	}
	w, g := treeSums(t, one), treeSums(t, localOne)
	if w["."] != g["."] {
		t.Fatalf("single file: got %q, want %q", g["."], w["."])
	}

	err := CopyFrom(ctx, c, filepath.Join(guestDir, "absent"), filepath.Join(t.TempDir(), "x"))
	if err == nil {
		t.Fatal("copy of a missing guest file succeeded")
	}
	c.Close()
}

// TestCopyFromDropsSetuid: what comes from a guest loses setuid and setgid,
// since the copy belongs to whoever runs banger (often root) and a guest
// must not plant a setuid-root program on the host; a directory keeps its
// sticky bit. A copy to the guest keeps every mode bit.
func TestCopyFromDropsSetuid(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	entries := []struct {
		path   string
		dir    bool
		mode   fs.FileMode // here, and on the guest after CopyTo
		onHost fs.FileMode // after CopyFrom
	}{
		{".", true, fs.ModeDir | fs.ModeSetgid | 0o755, fs.ModeDir | 0o755},
		{"suid", false, fs.ModeSetuid | 0o755, 0o755},
		{"sgid", false, fs.ModeSetgid | 0o755, 0o755},
		{"both", false, fs.ModeSetuid | fs.ModeSetgid | 0o750, 0o750},
		{"sticky-file", false, fs.ModeSticky | 0o644, 0o644},
		{"shared", true, fs.ModeDir | fs.ModeSetgid | fs.ModeSticky | 0o777, fs.ModeDir | fs.ModeSticky | 0o777},
		{"shared/suid", false, fs.ModeSetuid | 0o700, 0o700},
	}
	src := filepath.Join(t.TempDir(), "tree")
	for _, e := range entries {
		p := filepath.Join(src, e.path)
		var err error
		if e.dir {
			err = os.Mkdir(p, 0o700)
		} else {
			err = os.WriteFile(p, []byte("#!/bin/sh\nid\n"), 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range slices.Backward(entries) {
		if err := os.Chmod(filepath.Join(src, e.path), e.mode); err != nil {
			t.Fatal(err)
		}
	}
	checkModes := func(t *testing.T, root string, want func(mode, onHost fs.FileMode) fs.FileMode) {
		t.Helper()
		for _, e := range entries {
			fi, err := os.Lstat(filepath.Join(root, e.path))
			if err != nil {
				t.Fatal(err)
			}
			if w := want(e.mode, e.onHost); fi.Mode() != w {
				t.Errorf("%s: mode %v, want %v", e.path, fi.Mode(), w)
			}
		}
	}
	here := func(mode, _ fs.FileMode) fs.FileMode { return mode }
	host := func(_, onHost fs.FileMode) fs.FileMode { return onHost }
	checkModes(t, src, here) // the host file system honours every bit asked

	// The test "guest" is this host: remote paths are host paths.
	remote := filepath.Join(t.TempDir(), "copied")
	if err := CopyTo(ctx, c, src, remote); err != nil {
		t.Fatal(err)
	}
	checkModes(t, remote, here)

	back := filepath.Join(t.TempDir(), "back")
	if err := CopyFrom(ctx, c, remote, back); err != nil {
		t.Fatal(err)
	}
	checkModes(t, back, host)

	// A single setuid file, to a new path and over an existing setuid file.
	dir := t.TempDir()
	over := filepath.Join(dir, "over")
	if err := os.WriteFile(over, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(over, fs.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{filepath.Join(dir, "new"), over} {
		if err := CopyFrom(ctx, c, filepath.Join(remote, "suid"), dst); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o755 {
			t.Errorf("%s: mode %v, want %v", filepath.Base(dst), fi.Mode(), fs.FileMode(0o755))
		}
	}
	c.Close()
}

func TestCopyCancel(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("x"), 0o644)
	if err := CopyTo(ctx, c, src, filepath.Join(t.TempDir(), "g")); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	c.Close()
}

func TestParseCopyArg(t *testing.T) {
	ok := []struct {
		in, vm, path string
		remote       bool
	}{
		{"web:/etc/hosts", "web", "/etc/hosts", true},
		{"0a1b2c3d:/tmp/x y", "0a1b2c3d", "/tmp/x y", true},
		{"web:/a:b", "web", "/a:b", true},
		{"/tmp/a:b", "", "/tmp/a:b", false},
		{"./web:/x", "", "./web:/x", false},
		{"dir/web:x", "", "dir/web:x", false},
		{"file.txt", "", "file.txt", false},
		{".", "", ".", false},
	}
	for _, c := range ok {
		vm, p, remote, err := ParseCopyArg(c.in)
		if err != nil || vm != c.vm || p != c.path || remote != c.remote {
			t.Errorf("ParseCopyArg(%q) = %q, %q, %v, %v; want %q, %q, %v", c.in, vm, p, remote, err, c.vm, c.path, c.remote)
		}
	}
	for _, in := range []string{"", ":/etc/hosts", "web:", "web:etc/hosts", "we b:/x"} {
		if _, _, _, err := ParseCopyArg(in); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseCopyArg(%q): want an invalid argument error, got %v", in, err)
		}
	}

	spec, err := ParseCopyArgs("./local", "web:/tmp/dst")
	if err != nil || spec != (CopySpec{VM: "web", ToGuest: true, Local: "./local", Remote: "/tmp/dst"}) {
		t.Errorf("to guest: %+v %v", spec, err)
	}
	spec, err = ParseCopyArgs("web:/var/log", "logs")
	if err != nil || spec != (CopySpec{VM: "web", Local: "logs", Remote: "/var/log"}) {
		t.Errorf("from guest: %+v %v", spec, err)
	}
	for _, c := range [][2]string{{"a", "b"}, {"web:/a", "db:/b"}, {":/a", "b"}, {"a", "web:rel"}} {
		if _, err := ParseCopyArgs(c[0], c[1]); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseCopyArgs(%q, %q): want an invalid argument error, got %v", c[0], c[1], err)
		}
	}
}

func TestSafeCopyName(t *testing.T) {
	for _, n := range []string{"", ".", "..", "a/b", "../x", "/", "a\x00"} {
		if safeCopyName(n) == nil {
			t.Errorf("%q accepted as a name listed by the guest", n)
		}
	}
	if err := safeCopyName("x y 'z'"); err != nil {
		t.Error(err)
	}
}
