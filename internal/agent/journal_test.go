package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// TestLinkJournal: after a machine ID change, the journal dir of the old
// ID is found under the new one (a restored guest's journald keeps writing
// to the old); twice is harmless; a dir without the old ID's journal, or an
// old ID that is not one, gets no link.
func TestLinkJournal(t *testing.T) {
	const old, id = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	root := t.TempDir()
	persistent, volatile := filepath.Join(root, "journal"), t.TempDir()
	// A dir beside the journal's, which an old id of "../victim" would name.
	for _, d := range []string{persistent, filepath.Join(root, "victim")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(persistent, old), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(persistent, old, "system.journal"), []byte("j"), 0o640); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	for range 2 {
		linkJournal(logger, []string{persistent, volatile}, old, id)
	}
	b, err := os.ReadFile(filepath.Join(persistent, id, "system.journal"))
	if err != nil || string(b) != "j" {
		t.Fatalf("the old journal under the new id: %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(persistent, id)); err != nil || target != old {
		t.Fatalf("link %q, %v: want a relative link to %s", target, err, old)
	}
	if _, err := os.Lstat(filepath.Join(volatile, id)); !os.IsNotExist(err) {
		t.Fatalf("a link where there was no journal: %v", err)
	}
	linkJournal(logger, []string{persistent}, "../victim", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	if _, err := os.Lstat(filepath.Join(persistent, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")); !os.IsNotExist(err) {
		t.Fatalf("a link from an old id that is not one: %v", err)
	}
}
