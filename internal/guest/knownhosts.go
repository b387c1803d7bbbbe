// Package guest is how banger reaches into guests: SSH with pinned host
// keys, and the identity written onto a VM's disk.
package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh/knownhosts"
)

// RemovePins deletes every known_hosts line that names any of hosts (an IP
// or a VM name), keeping all other lines and comments. A missing file is
// not an error. The file is replaced atomically.
func RemovePins(path string, hosts ...string) error {
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

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
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
