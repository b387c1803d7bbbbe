package identity

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/banger-vm/banger/errdefs"
)

var (
	// ErrHostKeyMismatch marks a guest that presented a host key other than
	// the one pinned for it. It is never retried.
	ErrHostKeyMismatch = errors.New("host key mismatch")
	// ErrHostKeyUnknown marks a guest with no pinned host key when trust on
	// first use is off.
	ErrHostKeyUnknown = errors.New("no pinned host key")
)

// HostKeyCallback checks the host key of the VM called name against the
// pins in the known_hosts file at path. The dial address the callback is
// given (the VM's IP) and the VM's name are both looked up; every pin found
// for either must accept the key. A key matching its pins is accepted.
// With no pin for either, tofu (for imported images where banger could not
// place host keys) pins the key under both and accepts it; without tofu the
// connection is refused. A key that does not match is refused with an error
// naming the VM and the file.
//
// The check and a trust-on-first-use pin happen under the file's lock, so
// two first connections cannot pin two different keys.
func HostKeyCallback(path, name string, tofu bool) ssh.HostKeyCallback {
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		hosts := []string{knownhosts.Normalize(hostname)}
		if name != "" && name != hosts[0] {
			hosts = append(hosts, name)
		}
		if _, err := normalizeHosts(hosts); err != nil {
			return err
		}
		return withPinsLock(path, tofu, func() error {
			return checkLocked(path, name, hosts, remote, key, tofu)
		})
	}
}

func checkLocked(path, name string, hosts []string, remote net.Addr, key ssh.PublicKey, tofu bool) error {
	check, err := loadKnownHosts(path)
	if err != nil {
		return err
	}
	if remote == nil {
		remote = &net.TCPAddr{IP: net.IPv4zero, Port: 22}
	}
	vm := name
	if vm == "" {
		vm = hosts[0]
	}
	known := false
	for _, h := range hosts {
		err := check(hostPort(h), remote, key)
		var keyErr *knownhosts.KeyError
		var revoked *knownhosts.RevokedError
		switch {
		case err == nil:
			known = true
		case errors.As(err, &keyErr) && len(keyErr.Want) == 0:
			// No pin for this name of the VM.
		case errors.As(err, &keyErr), errors.As(err, &revoked):
			return errdefs.FailedPrecondition(
				"vm %q presented host key %s %s, but %s pins a different key for %q: refusing to connect: %w "+
					"(hint: deleting a VM removes its pins, so a new VM given the same IP and name is not refused; "+
					"if this guest's host keys changed on purpose, remove the lines for %s from %s)",
				vm, key.Type(), ssh.FingerprintSHA256(key), path, h, ErrHostKeyMismatch,
				strings.Join(hosts, " and "), path)
		default:
			return fmt.Errorf("check host key of vm %q against %s: %w", vm, path, err)
		}
	}
	if known {
		return nil
	}
	if !tofu {
		return errdefs.FailedPrecondition(
			"vm %q has %w for %s in %s: refusing to connect (hint: banger pins the keys it generates when it creates a VM; recreate the VM)",
			vm, ErrHostKeyUnknown, strings.Join(hosts, " or "), path)
	}
	return pinLocked(path, hosts, []ssh.PublicKey{key})
}

// loadKnownHosts parses the file with x/crypto's knownhosts; a missing file
// has no pins.
func loadKnownHosts(path string) (ssh.HostKeyCallback, error) {
	check, err := knownhosts.New(path)
	if os.IsNotExist(err) {
		return knownhosts.New(os.DevNull)
	}
	if err != nil {
		return nil, fmt.Errorf("read known hosts %s: %w", path, err)
	}
	return check, nil
}

// hostPort turns a normalized known_hosts host back into the host:port form
// the knownhosts callback expects.
func hostPort(h string) string {
	if strings.HasPrefix(h, "[") {
		return h // "[addr]:port"
	}
	return net.JoinHostPort(h, "22")
}

// PinnedAlgorithms returns the host key algorithms of the keys pinned for
// hosts, so the client asks the guest for exactly the pinned key type (a
// guest that also has other host key types never gets to present them).
// Nil means no pin: the client's defaults apply.
func PinnedAlgorithms(path string, hosts []string) []string {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	want := map[string]bool{}
	for _, h := range hosts {
		want[knownhosts.Normalize(h)] = true
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				algos = append(algos, x)
			}
		}
	}
	for len(data) > 0 {
		marker, hs, key, _, rest, err := ssh.ParseKnownHosts(data)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil // let the callback report the bad file
		}
		data = rest
		if marker != "" {
			continue
		}
		match := false
		for _, h := range hs {
			match = match || want[h]
		}
		if !match {
			continue
		}
		switch key.Type() {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(key.Type())
		}
	}
	return algos
}
