package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
)

// keyComment names banger's keys in authorized_keys and .pub files.
const keyComment = "banger"

// EnsureClientKey returns banger's managed SSH client key stored at path,
// and its public key as an authorized_keys line. The key is an ed25519 key
// created on first use (file 0600, directory 0700; a copy of the public key
// is written next to it as path.pub) and reused afterwards. An existing file
// that others can read or that does not parse is an error: it is never
// silently replaced.
func EnsureClientKey(path string) (ssh.Signer, string, error) {
	signer, err := loadClientKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		signer, err = createClientKey(path)
	}
	if err != nil {
		return nil, "", err
	}
	return signer, authorizedLine(signer.PublicKey()), nil
}

func loadClientKey(path string) (ssh.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errdefs.FailedPrecondition("ssh client key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, errdefs.FailedPrecondition("ssh client key %s has mode %04o: others can read it (hint: chmod 600 %s)", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, errdefs.FailedPrecondition("ssh client key %s cannot be used: %v (hint: move it away and banger creates a new one)", path, err)
	}
	return signer, nil
}

// createClientKey writes a new key without ever clobbering one: the file is
// written aside and hard-linked into place, so a concurrent creator's key
// wins and is the one returned.
func createClientKey(path string) (_ ssh.Signer, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ssh client key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, keyComment)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, fmt.Errorf("create ssh client key: %w", err)
	}
	defer func() { // linked into place or failed: the temporary name goes
		if rerr := os.Remove(tmp.Name()); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	_, err = tmp.Write(pem.EncodeToMemory(block))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("create ssh client key: %w", err)
	}
	// CreateTemp made it 0600.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create ssh client key: %w", err)
	}
	signer, err := loadClientKey(path)
	if err != nil {
		return nil, err
	}
	pub := []byte(authorizedLine(signer.PublicKey()) + "\n")
	if err := writeFileAtomic(path+".pub", pub, 0o644); err != nil {
		return nil, fmt.Errorf("write ssh client public key: %w", err)
	}
	return signer, nil
}

// authorizedLine is key in authorized_keys form with banger's comment, no
// newline.
func authorizedLine(key ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(key)), "\n") + " " + keyComment
}

// HostKey is one SSH host key generated for a VM.
type HostKey struct {
	// File is the private key's name under /etc/ssh, e.g.
	// "ssh_host_ed25519_key"; the public key goes to File+".pub".
	File string
	// Private is the OpenSSH private key file's content.
	Private []byte
	// Public is the public key, what banger pins.
	Public ssh.PublicKey
}

// PublicFile is the content of the key's .pub file.
func (k HostKey) PublicFile() []byte {
	return []byte(authorizedLine(k.Public) + "\n")
}

// HostKeys are a VM's own SSH host keys.
type HostKeys []HostKey

// PublicKeys returns the keys to pin.
func (hk HostKeys) PublicKeys() []ssh.PublicKey {
	out := make([]ssh.PublicKey, 0, len(hk))
	for _, k := range hk {
		out = append(out, k.Public)
	}
	return out
}

// NewHostKeys generates a VM's host keys: one ed25519 key. sshd starts with
// any one usable host key (it only warns about the default RSA and ECDSA
// files being absent), every OpenSSH client since 6.5 speaks ed25519, and
// banger's client asks for the pinned key type only, so RSA and ECDSA keys
// would cost generation time and image bytes for nothing. Distributions
// that regenerate missing host key types at boot (Fedora's sshd-keygen)
// add keys banger never asks for; the ed25519 key stays the one pinned.
func NewHostKeys() (HostKeys, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, keyComment)
	if err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return HostKeys{{
		File:    "ssh_host_ed25519_key",
		Private: pem.EncodeToMemory(block),
		Public:  sshPub,
	}}, nil
}

// NewMachineID returns a fresh systemd machine ID: 128 random bits as 32
// lowercase hex digits (a random UUID's bits, as systemd-machine-id-setup
// makes them).
func NewMachineID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant
	return hex.EncodeToString(b[:]), nil
}
