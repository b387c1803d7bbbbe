// Package identity is what makes a guest one VM, and how banger knows it:
// the identity files (hostname, machine id, network, banger's authorized
// key, the VM's own SSH host keys) with their two writers, debugfs onto a
// raw ext4 root disk and the config disk banger's initramfs applies; the
// client key; and the known_hosts pins the host keys are checked against.
package identity

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/banger-vm/banger/errdefs"
)

// RemovePins deletes every known_hosts line that names any of hosts (an IP
// or a VM name), keeping all other lines and comments. A missing file is
// not an error. The file is replaced atomically.
func RemovePins(path string, hosts ...string) error {
	return withPinsLock(path, false, func() error { return removePinsLocked(path, hosts) })
}

func removePinsLocked(path string, hosts []string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	drop := map[string]bool{}
	for _, h := range hosts {
		if h != "" {
			drop[knownhosts.Normalize(h)] = true
		}
	}
	var out bytes.Buffer
	changed := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if pinsAny(line, drop) {
			changed = true
			continue
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if !changed {
		return nil
	}
	return writeFileAtomic(path, out.Bytes(), 0o600)
}

func pinsAny(line string, drop map[string]bool) bool {
	f := strings.Fields(line)
	if len(f) < 3 || strings.HasPrefix(f[0], "#") {
		return false
	}
	field := f[0]
	if strings.HasPrefix(field, "@") { // @cert-authority / @revoked marker
		if len(f) < 4 {
			return false
		}
		field = f[1]
	}
	for _, h := range strings.Split(field, ",") {
		if drop[h] {
			return true
		}
	}
	return false
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		// Gone after the rename; left behind only when a step failed.
		if rerr := os.Remove(tmp.Name()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Pin records keys as the only host keys of hosts (a VM's IP and its name)
// in the known_hosts file at path: existing lines naming any of hosts are
// replaced, other lines are kept. The file is rewritten atomically with mode
// 0600; its directory is created (0700) if missing.
func Pin(path string, hosts []string, keys ...ssh.PublicKey) error {
	norm, err := normalizeHosts(hosts)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return errdefs.InvalidArgument("pin %s: no host key given", strings.Join(norm, ","))
	}
	return withPinsLock(path, true, func() error { return pinLocked(path, norm, keys) })
}

func pinLocked(path string, norm []string, keys []ssh.PublicKey) error {
	if err := removePinsLocked(path, norm); err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var out bytes.Buffer
	out.Write(data)
	if out.Len() > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		out.WriteByte('\n')
	}
	for _, k := range keys {
		out.WriteString(knownhosts.Line(norm, k))
		out.WriteByte('\n')
	}
	return writeFileAtomic(path, out.Bytes(), 0o600)
}

// normalizeHosts puts hosts in known_hosts form (an address with a port
// other than 22 becomes "[addr]:port") and refuses what cannot be a host
// field.
func normalizeHosts(hosts []string) ([]string, error) {
	var norm []string
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if strings.ContainsAny(h, ", \t\r\n#*?!@") {
			return nil, errdefs.InvalidArgument("host %q cannot be pinned: it is not an address or a VM name", h)
		}
		norm = append(norm, knownhosts.Normalize(h))
	}
	if len(norm) == 0 {
		return nil, errdefs.InvalidArgument("no host to pin")
	}
	return norm, nil
}

// withPinsLock runs fn holding an exclusive flock on the directory of the
// known_hosts file, so that concurrent pins (two VMs, or the daemon and a
// CLI) never lose each other's lines. The directory is locked rather than
// the file because the file is replaced by rename. With create, a missing
// directory is made (0700); without, a missing directory means there is
// nothing to lock and fn runs unlocked (it finds no file).
func withPinsLock(path string, create bool, fn func() error) error {
	dir := filepath.Dir(path)
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	d, err := os.Open(dir)
	if os.IsNotExist(err) && !create {
		return fn()
	}
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		err = syscall.Flock(int(d.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", dir, err)
	}
	// Closing d (deferred above) releases the lock.
	return fn()
}
