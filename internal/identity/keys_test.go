package identity

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
)

func TestEnsureClientKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ssh")
	path := filepath.Join(dir, "id_ed25519")
	s1, line1, err := EnsureClientKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if s1.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("key type %s", s1.PublicKey().Type())
	}
	pub, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(line1))
	if err != nil || len(rest) != 0 || comment != "banger" || !bytes.Equal(pub.Marshal(), s1.PublicKey().Marshal()) {
		t.Fatalf("authorized key line %q: %v", line1, err)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700, path + ".pub": 0o644} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %o", p, fi.Mode().Perm(), err, want)
		}
	}

	// Reused, not recreated.
	s2, line2, err := EnsureClientKey(path)
	if err != nil || line2 != line1 || !bytes.Equal(s2.PublicKey().Marshal(), s1.PublicKey().Marshal()) {
		t.Fatalf("second call gave another key: %q vs %q (%v)", line2, line1, err)
	}

	// Readable by others: refused, left alone.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureClientKey(path); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("0644 key: %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}

	// Not a key: refused, not replaced.
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureClientKey(path); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), path) {
		t.Fatalf("garbage key: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "garbage" {
		t.Fatal("an unparsable key was replaced")
	}
}

func TestNewHostKeys(t *testing.T) {
	a, err := NewHostKeys()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewHostKeys()
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 1 || a[0].File != "ssh_host_ed25519_key" || a[0].Public.Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("host keys %+v", a)
	}
	signer, err := ssh.ParsePrivateKey(a[0].Private)
	if err != nil || !bytes.Equal(signer.PublicKey().Marshal(), a[0].Public.Marshal()) {
		t.Fatalf("private key file does not hold the public key: %v", err)
	}
	if !bytes.HasPrefix(a[0].Private, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n")) {
		t.Fatalf("not an OpenSSH private key file:\n%s", a[0].Private)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(a[0].PublicFile())
	if err != nil || !bytes.Equal(pub.Marshal(), a[0].Public.Marshal()) {
		t.Fatalf(".pub file %q: %v", a[0].PublicFile(), err)
	}
	if bytes.Equal(a[0].Public.Marshal(), b[0].Public.Marshal()) {
		t.Fatal("two VMs got the same host key")
	}
	if len(a.PublicKeys()) != 1 {
		t.Fatal("PublicKeys")
	}
}

func TestNewMachineID(t *testing.T) {
	a, err := NewMachineID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewMachineID()
	if !machineIDRE.MatchString(a) || a == b {
		t.Fatalf("machine ids %q %q", a, b)
	}
}
