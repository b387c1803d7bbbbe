package identity

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRemovePins(t *testing.T) {
	p := filepath.Join(t.TempDir(), "known_hosts")
	in := "# banger pins\n" +
		"172.30.0.2 ssh-ed25519 AAAAkeyA\n" +
		"web ssh-ed25519 AAAAkeyA\n" +
		"172.30.0.20 ssh-ed25519 AAAAkeyB\n" +
		"webby,172.30.0.3 ssh-ed25519 AAAAkeyC\n" +
		"[172.30.0.2]:2222 ssh-ed25519 AAAAkeyD\n"
	if err := os.WriteFile(p, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := RemovePins(p, "172.30.0.2", "web"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	want := "# banger pins\n" +
		"172.30.0.20 ssh-ed25519 AAAAkeyB\n" +
		"webby,172.30.0.3 ssh-ed25519 AAAAkeyC\n" +
		"[172.30.0.2]:2222 ssh-ed25519 AAAAkeyD\n"
	if string(got) != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	if err := RemovePins(filepath.Join(t.TempDir(), "absent"), "x"); err != nil {
		t.Fatalf("missing file: %v", err)
	}
}

func TestPinnedHosts(t *testing.T) {
	p := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(p, []byte("# c\n172.30.0.2,web ssh-ed25519 AAAA\n[172.30.0.3]:2222 ssh-ed25519 BBBB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := PinnedHosts(p)
	if err != nil || strings.Join(got, " ") != "172.30.0.2 web [172.30.0.3]:2222" {
		t.Fatalf("PinnedHosts = %v, %v", got, err)
	}
	if got, err := PinnedHosts(filepath.Join(t.TempDir(), "none")); err != nil || got != nil {
		t.Fatalf("missing file: %v %v", got, err)
	}
}
