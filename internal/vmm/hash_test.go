package vmm

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

// TestFileSHA256Remembered: a file's hash is remembered, and a file that
// changes (rewritten in place, or replaced) is hashed again.
func TestFileSHA256Remembered(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmlinuz")
	want := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	for i, content := range [][]byte{[]byte("kernel one"), []byte("kernel two, longer"), []byte("kernel 3!!")} {
		if i == 2 {
			// Replaced by a rename: another inode.
			tmp := p + ".new"
			if err := os.WriteFile(tmp, content, 0o444); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		} else {
			// Rewritten in place: its size and change time differ.
			if err := os.WriteFile(p, content, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			got, err := fileSHA256(p)
			if err != nil || got != want(content) {
				t.Fatalf("content %d: %s %v, want %s", i, got, err, want(content))
			}
		}
	}
}
