package testimage

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestLastBootCount(t *testing.T) {
	con := "[ 1.0] x\r\n" + BootLine(1) + "\r\n" + ShutdownMarker + "\r\n[ 0.1] y\r\n" + BootLine(12) + "\r\n"
	if n, ok := LastBootCount([]byte(con)); !ok || n != 12 {
		t.Fatalf("LastBootCount = %d, %v; want 12", n, ok)
	}
	if _, ok := LastBootCount([]byte("no marker")); ok {
		t.Fatal("found a count in output without a boot line")
	}
	if BootLine(3) != "BANGER-TEST-BOOT count=3" {
		t.Fatalf("BootLine(3) = %q", BootLine(3))
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "initrd.img")
	boom := errors.New("boom")
	err := writeAtomic(p, func(w io.Writer) error {
		io.WriteString(w, "half")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("failed write left %v", ents)
	}
	if err := writeAtomic(p, func(w io.Writer) error { _, err := io.WriteString(w, "full"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "full" {
		t.Fatalf("read back %q, %v", b, err)
	}
}

func TestCleanTemps(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{tmpPrefix + "kernel-x-123", tmpPrefix + "rootfs.ext4-9", "rootfs-abc.ext4"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, tmpPrefix+"rootfs-1", "tree"), 0o755); err != nil {
		t.Fatal(err)
	}
	cleanTemps(dir)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "rootfs-abc.ext4" {
		t.Fatalf("left %v, want only rootfs-abc.ext4", ents)
	}
}
