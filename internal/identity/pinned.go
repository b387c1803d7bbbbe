package identity

import (
	"bufio"
	"bytes"
	"os"
	"strings"
)

// PinnedHosts lists the hosts (normalized, as known_hosts writes them)
// that have a pin in the known_hosts file at path. A missing file has none.
func PinnedHosts(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		field := f[0]
		if strings.HasPrefix(field, "@") && len(f) >= 4 {
			field = f[1]
		}
		out = append(out, strings.Split(field, ",")...)
	}
	return out, sc.Err()
}
