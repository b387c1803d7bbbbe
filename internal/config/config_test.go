package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/banger-vm/banger/errdefs"
)

type flags struct {
	stateDir  string
	vmm       string
	graceful  time.Duration
	dns       []string
	noNetwork bool
	fs        *pflag.FlagSet
}

func newFlags(t *testing.T, args ...string) *flags {
	t.Helper()
	f := &flags{fs: pflag.NewFlagSet("daemon", pflag.ContinueOnError)}
	f.fs.StringVar(&f.stateDir, "state-dir", "/var/lib/banger", "")
	f.fs.StringVar(&f.vmm, "default-vmm", "auto", "")
	f.fs.DurationVar(&f.graceful, "graceful-timeout", 30*time.Second, "")
	f.fs.StringSliceVar(&f.dns, "guest-dns", nil, "")
	f.fs.BoolVar(&f.noNetwork, "no-network", false, "")
	f.fs.String("config", "", "")
	if err := f.fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return f
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApplySetsEveryKindOfFlag(t *testing.T) {
	p := writeConfig(t, `
state-dir = "/srv/banger"
default-vmm = "qemu"
graceful-timeout = "45s"
guest-dns = ["9.9.9.9", "1.1.1.1"]
no-network = true
`)
	c, err := Load(p, true)
	if err != nil {
		t.Fatal(err)
	}
	f := newFlags(t)
	if err := c.Apply(f.fs, nil, "config"); err != nil {
		t.Fatal(err)
	}
	if f.stateDir != "/srv/banger" || f.vmm != "qemu" || f.graceful != 45*time.Second || !f.noNetwork ||
		strings.Join(f.dns, ",") != "9.9.9.9,1.1.1.1" {
		t.Fatalf("flags after the file: %+v", *f)
	}
}

func TestCommandLineWins(t *testing.T) {
	p := writeConfig(t, "default-vmm = \"qemu\"\nguest-dns = [\"9.9.9.9\"]\n")
	c, err := Load(p, true)
	if err != nil {
		t.Fatal(err)
	}
	f := newFlags(t, "--default-vmm", "firecracker")
	if err := c.Apply(f.fs, nil, "config"); err != nil {
		t.Fatal(err)
	}
	if f.vmm != "firecracker" {
		t.Fatalf("default-vmm = %q, want the command line's firecracker", f.vmm)
	}
	if strings.Join(f.dns, ",") != "9.9.9.9" {
		t.Fatalf("guest-dns = %v, want the file's", f.dns)
	}
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"unknown key", "state-dir = \"/x\"\nzone = \"qemu\"\n", `unknown key "zone"`},
		{"skipped key", "config = \"/other.toml\"\n", `unknown key "config"`},
		{"table", "[network]\nbridge = \"b\"\n", `unknown key "network"`},
		{"number for duration", "graceful-timeout = 30\n", `key "graceful-timeout"`},
		{"bad duration", "graceful-timeout = \"thirty\"\n", `key "graceful-timeout"`},
		{"string for bool", "no-network = \"yes\"\n", `key "no-network"`},
		{"list for string", "default-vmm = [\"qemu\"]\n", `key "default-vmm"`},
		{"number in list", "guest-dns = [1]\n", `key "guest-dns"`},
		{"comma in list element", "guest-dns = [\"1.1.1.1,8.8.8.8\"]\n", `key "guest-dns"`},
		{"bad toml", "state-dir = \n", "config.toml:1"},
		{"duplicate key", "state-dir = \"/a\"\nstate-dir = \"/b\"\n", "config.toml:2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.text)
			f := newFlags(t)
			before := *f
			c, err := Load(p, true)
			if err == nil {
				err = c.Apply(f.fs, nil, "config")
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %q does not name %q and the file", err, tc.want)
			}
			if errdefs.ClassOf(err) != errdefs.ClassInvalidArgument {
				t.Fatalf("class %v, want invalid argument", errdefs.ClassOf(err))
			}
			if tc.name == "unknown key" && f.stateDir != before.stateDir {
				t.Fatal("a refused file changed a flag")
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "absent.toml")
	c, err := Load(p, false)
	if err != nil || len(c.Values) != 0 {
		t.Fatalf("missing default file: %v, %v", c, err)
	}
	if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("missing explicit file: %v", err)
	}
}

func TestWritableByOthersRefused(t *testing.T) {
	p := writeConfig(t, "default-vmm = \"qemu\"\n")
	if err := os.Chmod(p, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p, true); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("world-writable config: %v", err)
	}
}
