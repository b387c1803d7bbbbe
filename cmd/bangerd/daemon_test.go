package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/internal/layout"
)

// daemonFlags parses args as bangerd would and applies the config.
func daemonFlags(t *testing.T, args ...string) (*cobra.Command, *globals, error) {
	t.Helper()
	cmd := newRoot()
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	g := &globals{}
	g.layout.StateDir, _ = cmd.Flags().GetString("state-dir")
	g.layout.RuntimeDir, _ = cmd.Flags().GetString("runtime-dir")
	path, _ := cmd.Flags().GetString("config")
	return cmd, g, applyConfig(cmd, g, path)
}

func TestDaemonConfigFile(t *testing.T) {
	t.Setenv(layout.EnvStateDir, "")
	dir := t.TempDir()
	p := filepath.Join(dir, "config.toml")
	text := "state-dir = \"" + dir + "/state\"\ndefault-vmm = \"qemu\"\nvm-log-cap = \"1MiB\"\nguest-dns = [\"9.9.9.9\"]\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, _, err := daemonFlags(t, "--config", p, "--default-vmm", "firecracker")
	if err != nil {
		t.Fatal(err)
	}
	f := cmd.Flags()
	if v, _ := f.GetString("default-vmm"); v != "firecracker" {
		t.Errorf("default-vmm %q: the command line must win", v)
	}
	if v, _ := f.GetString("vm-log-cap"); v != "1MiB" {
		t.Errorf("vm-log-cap %q, want the file's", v)
	}
	if v, _ := f.GetStringSlice("guest-dns"); len(v) != 1 || v[0] != "9.9.9.9" {
		t.Errorf("guest-dns %v, want the file's", v)
	}
	if v, _ := f.GetString("state-dir"); v != filepath.Join(dir, "state") {
		t.Errorf("state dir %q, want the file's", v)
	}

	// The environment variable wins over the file, like a flag.
	t.Setenv(layout.EnvStateDir, filepath.Join(dir, "env"))
	cmd, _, err = daemonFlags(t, "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := cmd.Flags().GetString("state-dir"); v != filepath.Join(dir, "env") {
		t.Errorf("state dir %q, want the environment's", v)
	}
}

func TestDaemonConfigRefusesGlobalsThatAreNotSettings(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte("output = \"json\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := daemonFlags(t, "--config", p); err == nil {
		t.Fatal("output accepted as a daemon setting")
	}
}

func TestDaemonMissingExplicitConfig(t *testing.T) {
	if _, _, err := daemonFlags(t, "--config", filepath.Join(t.TempDir(), "absent.toml")); err == nil {
		t.Fatal("a missing --config file was accepted")
	}
}

// TestDaemonDiskStrategyKey: disk-strategy is a config key like its flag.
func TestDaemonDiskStrategyKey(t *testing.T) {
	t.Setenv(layout.EnvStateDir, "")
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte("disk-strategy = \"sparse-copy\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, _, err := daemonFlags(t, "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := cmd.Flags().GetString("disk-strategy"); v != "sparse-copy" {
		t.Fatalf("disk-strategy %q, want the file's sparse-copy", v)
	}
}

// bangerd follows the CLI's conventions: an argument it does not take or a
// flag it does not know is a usage error (exit 2) naming the command,
// before anything runs (the daemon would need root).
func TestDaemonRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{{"extra"}, {"--no-such-flag"}, {"doctor", "extra"}, {"doctor", "--no-such-flag"}, {"--log-cap", "1"}} {
		root := newRoot()
		root.SetArgs(append([]string{"--state-dir", t.TempDir(), "--runtime-dir", t.TempDir()}, args...))
		var out strings.Builder
		root.SetOut(&out)
		root.SetErr(&out)
		err := root.Execute()
		if cli.ExitCode(err) != cli.ExitInvalidArgument || !strings.Contains(err.Error(), args[0]) && !strings.Contains(err.Error(), "bangerd") {
			t.Errorf("bangerd %s: exit %d (%v), want %d naming the command", strings.Join(args, " "), cli.ExitCode(err), err, cli.ExitInvalidArgument)
		}
	}
}
