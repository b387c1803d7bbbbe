// Package config reads the daemon's TOML configuration file and applies it
// to the daemon's flags: one key per flag, named like the flag, and a flag
// given on the command line wins over the file.
//
//	state-dir = "/var/lib/banger"
//	default-vmm = "qemu"
//	disk-strategy = "auto"
//	graceful-timeout = "30s"
//	guest-dns = ["1.1.1.1", "9.9.9.9"]
//	no-network = false
//	vm-log-cap = "16MiB"
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/pflag"

	"github.com/banger-vm/banger/errdefs"
)

// DefaultPath is read when --config is not given; its absence is fine.
const DefaultPath = "/etc/banger/config.toml"

// File is a parsed configuration file: flag name to value.
type File struct {
	Path   string
	Values map[string]any
}

// Load reads path. A missing file is an empty configuration unless
// explicit (the user named it with --config), then it is an error. The
// file must not be writable by anyone but its owner and root: the daemon
// runs as root and takes paths and programs from it.
func Load(path string, explicit bool) (*File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return &File{Path: path}, nil
	}
	if err != nil {
		return nil, errdefs.InvalidArgument("config file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, errdefs.InvalidArgument("config file %s is not a regular file", path)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return nil, errdefs.InvalidArgument("config file %s is writable by group or others (mode %04o) (hint: chmod go-w %s)",
			path, st.Mode().Perm(), path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
		return nil, errdefs.InvalidArgument("config file %s is owned by uid %d, not root (hint: chown root %s)", path, sys.Uid, path)
	}
	values := map[string]any{}
	dec := toml.NewDecoder(f)
	if err := dec.Decode(&values); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, errdefs.InvalidArgument("config file %s:%d:%d: %s", path, row, col, de.Error())
		}
		return nil, errdefs.InvalidArgument("config file %s: %v", path, err)
	}
	return &File{Path: path, Values: values}, nil
}

// Apply sets every flag of fs named in the file, except those given on the
// command line (given reports them; nil: fs's own Changed). Keys that are no
// flag of fs, or are in skip, are refused, as are values of the wrong type.
func (c *File) Apply(fs *pflag.FlagSet, given func(name string) bool, skip ...string) error {
	if given == nil {
		given = func(name string) bool { return fs.Changed(name) }
	}
	keys := make([]string, 0, len(c.Values))
	for k := range c.Values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Check every key before setting any: a refused file changes nothing.
	texts := make(map[string]string, len(keys))
	for _, k := range keys {
		fl := fs.Lookup(k)
		if fl == nil || fl.Hidden || contains(skip, k) {
			return errdefs.InvalidArgument("config file %s: unknown key %q (hint: keys are the daemon's flag names, see banger daemon --help)", c.Path, k)
		}
		s, err := flagText(fl, c.Values[k])
		if err != nil {
			return errdefs.InvalidArgument("config file %s: key %q: %v", c.Path, k, err)
		}
		texts[k] = s
	}
	for _, k := range keys {
		if given(k) {
			continue
		}
		if err := fs.Lookup(k).Value.Set(texts[k]); err != nil {
			return errdefs.InvalidArgument("config file %s: key %q: %v", c.Path, k, err)
		}
	}
	return nil
}

// flagText turns a TOML value into the text the flag parses, checking that
// its TOML type suits the flag's type.
func flagText(fl *pflag.Flag, v any) (string, error) {
	typ := fl.Value.Type()
	isList := strings.HasSuffix(typ, "Slice") || strings.HasSuffix(typ, "Array")
	switch v := v.(type) {
	case []any:
		if !isList {
			return "", fmt.Errorf("a list given for a %s setting", typ)
		}
		parts := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return "", fmt.Errorf("list element %v is not a string", e)
			}
			if strings.ContainsAny(s, ",\"") {
				return "", fmt.Errorf("list element %q contains a comma or quote", s)
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, ","), nil
	case map[string]any:
		return "", errors.New("a table is not a setting (hint: keys are flat, like the flags)")
	case string:
		if typ == "bool" {
			return "", fmt.Errorf("%q is a string; write true or false without quotes", v)
		}
		return v, nil
	case bool:
		if typ != "bool" {
			return "", fmt.Errorf("true/false given for a %s setting", typ)
		}
		return strconv.FormatBool(v), nil
	case int64:
		if typ == "bool" || typ == "duration" || isList {
			return "", fmt.Errorf("a number given for a %s setting (hint: durations are strings like \"30s\")", typ)
		}
		return strconv.FormatInt(v, 10), nil
	}
	return "", fmt.Errorf("unsupported value %v (%T)", v, v)
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}
