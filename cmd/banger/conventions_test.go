package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
)

// commands lists every command path of the CLI's tree ("vm start"...),
// hidden ones (cobra's __complete) left out, and those that hand their
// arguments to bangerd unread (daemon, doctor: bangerd's tests check them).
func commands(t *testing.T) map[string]*cobra.Command {
	t.Helper()
	out := map[string]*cobra.Command{}
	cli.Walk(newRoot(), func(c *cobra.Command) {
		if c.Hidden || c.DisableFlagParsing {
			return
		}
		out[strings.TrimPrefix(strings.TrimPrefix(c.CommandPath(), "banger"), " ")] = c
	})
	if len(out) < 20 {
		t.Fatalf("only %d commands in the tree", len(out))
	}
	return out
}

// Every command group, the root included, refuses a word that names none
// of its subcommands; every command refuses an unknown flag. Both exit 2
// and say what was wrong, before any daemon is asked (there is none).
func TestEveryCommandRefusesUnknownSubcommandsAndFlags(t *testing.T) {
	for path, c := range commands(t) {
		base := strings.Fields(path)
		if c.HasSubCommands() {
			args := append(append([]string{}, base...), "frobnicate", "x")
			out, err := run(t, args...)
			if cli.ExitCode(err) != cli.ExitInvalidArgument || !strings.Contains(err.Error(), `unknown command "frobnicate"`) ||
				!strings.Contains(err.Error(), strings.TrimSpace("banger "+path)) {
				t.Errorf("banger %s: exit %d, err %v", strings.Join(args, " "), cli.ExitCode(err), err)
			}
			if out != "" {
				t.Errorf("banger %s printed %q", strings.Join(args, " "), out)
			}
		}
		args := append(append([]string{}, base...), "--no-such-flag")
		if _, err := run(t, args...); cli.ExitCode(err) != cli.ExitInvalidArgument || !strings.Contains(err.Error(), "--no-such-flag") {
			t.Errorf("banger %s: exit %d, err %v", strings.Join(args, " "), cli.ExitCode(err), err)
		}
	}
}

// Commands taking no argument refuse one; those taking a fixed number
// refuse a missing one and an extra one; the message names the usage.
func TestArgumentCountsAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"vm", "list", "extra"}, {"image", "list", "extra"}, {"version", "extra"},
		{"vm", "create"}, {"vm", "create", "a", "b"}, {"vm", "show"}, {"vm", "show", "a", "b"}, {"vm", "start"},
		{"vm", "stop"}, {"vm", "delete"}, {"vm", "logs"}, {"vm", "ops"}, {"vm", "ssh"}, {"vm", "exec", "a"},
		{"vm", "cp", "a"}, {"image", "show"}, {"image", "delete"}, {"image", "import"}, {"image", "build", "a", "b"},
		{"image", "import", "x"}, // required --kernel and --rootfs
		{"completion", "bash", "extra"}, {"--version", "extra"},
	} {
		_, err := run(t, args...)
		if cli.ExitCode(err) != cli.ExitInvalidArgument {
			t.Errorf("banger %s: exit %d (%v), want %d", strings.Join(args, " "), cli.ExitCode(err), err, cli.ExitInvalidArgument)
			continue
		}
		if !strings.Contains(err.Error(), "usage:") && !strings.Contains(err.Error(), "hint:") && args[0] != "--version" {
			t.Errorf("banger %s: %v names no usage", strings.Join(args, " "), err)
		}
	}
}

func TestUnknownSubcommandNamesTheClosest(t *testing.T) {
	for args, want := range map[string]string{
		"vm lst":              "did you mean 'banger vm list'?",
		"vm strat web":        "did you mean 'banger vm start'?", //nolint:misspell // deliberate typo: tests the did-you-mean hint
		"image biuld":         "did you mean 'banger image build'?",
		"imgae list":          "did you mean 'banger image'?",
		"vm frobnicate w1 f1": "see 'banger vm --help'",
		"help vm lst":         "did you mean 'banger vm list'?",
	} {
		_, err := run(t, strings.Fields(args)...)
		if cli.ExitCode(err) != cli.ExitInvalidArgument || !strings.Contains(err.Error(), want) {
			t.Errorf("banger %s: exit %d, %v; want %q", args, cli.ExitCode(err), err, want)
		}
	}
}

func TestGroupAloneAndHelpPrintHelp(t *testing.T) {
	for _, args := range [][]string{{"vm"}, {"image"}, {}, {"help", "vm"}, {"vm", "--help"}} {
		out, err := run(t, args...)
		if err != nil || !strings.Contains(out, "Available Commands:") {
			t.Errorf("banger %v: %v\n%s", args, err, out)
		}
	}
}

// readmeExitCodes parses the README's exit-code table: rows
// "| CODE | meaning | `class`, ... |".
func readmeExitCodes(t *testing.T) map[errdefs.Class]int {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile(`^\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|\s*$`)
	class := regexp.MustCompile("`([a-z_]+)`")
	out := map[errdefs.Class]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := row.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		code, _ := strconv.Atoi(m[1])
		for _, c := range class.FindAllStringSubmatch(m[2], -1) {
			if _, dup := out[errdefs.Class(c[1])]; dup {
				t.Fatalf("README names class %s twice", c[1])
			}
			out[errdefs.Class(c[1])] = code
		}
	}
	if len(out) == 0 {
		t.Fatal("no exit-code table in README.md")
	}
	return out
}

// The README's exit-code table is what the CLI does, class by class.
func TestExitCodesMatchTheREADME(t *testing.T) {
	table := readmeExitCodes(t)
	all := []errdefs.Class{errdefs.ClassInternal, errdefs.ClassInvalidArgument, errdefs.ClassNotFound, errdefs.ClassAlreadyExists,
		errdefs.ClassConflict, errdefs.ClassFailedPrecondition, errdefs.ClassUnavailable, errdefs.ClassNotSupported,
		errdefs.ClassOutOfSpace, errdefs.ClassPermissionDenied}
	for _, c := range all {
		want, ok := table[c]
		if !ok {
			t.Errorf("README's exit-code table lacks class %s", c)
			continue
		}
		if got := cli.ExitCode(errdefs.New(c, "x")); got != want {
			t.Errorf("class %s exits %d, README says %d", c, got, want)
		}
	}
	if len(table) != len(all) {
		t.Errorf("README's table has classes %v, errdefs has %v", table, all)
	}
}

// With several NAMEs, -o json prints one array of the VMs acted on; a
// failure is reported on stderr and sets the exit code.
func TestVMActionJSONForSeveralVMs(t *testing.T) {
	dir := t.TempDir()
	startFakeDaemon(t, dir, func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("ref") == "ghost" {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(api.ErrorResponse{Error: api.Error{Class: "not_found", Message: `vm "ghost" not found`}})
			return
		}
		json.NewEncoder(w).Encode(api.VM{Name: r.PathValue("ref"), State: "running"})
	})
	exec := func(args ...string) (string, string, error) {
		root := newRoot()
		var out, errb bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errb)
		root.SetArgs(append([]string{"--runtime-dir", dir}, args...))
		err := root.Execute()
		return out.String(), errb.String(), err
	}
	out, _, err := exec("vm", "start", "a", "b", "-o", "json")
	var vms []api.VM
	if err != nil || json.Unmarshal([]byte(out), &vms) != nil || len(vms) != 2 || vms[1].Name != "b" {
		t.Fatalf("two vms: %v %q", err, out)
	}
	out, _, err = exec("vm", "start", "a", "-o", "json")
	var one api.VM
	if err != nil || json.Unmarshal([]byte(out), &one) != nil || one.Name != "a" {
		t.Fatalf("one vm: %v %q", err, out)
	}
	out, stderr, err := exec("vm", "start", "a", "ghost", "-o", "json")
	vms = nil
	if cli.ExitCode(err) != cli.ExitNotFound || json.Unmarshal([]byte(out), &vms) != nil || len(vms) != 1 || !strings.Contains(stderr, `banger: ghost: vm "ghost" not found`) {
		t.Fatalf("with a failure: exit %d %q %q", cli.ExitCode(err), out, stderr)
	}
	out, _, err = exec("vm", "start", "a", "b", "-q")
	if err != nil || out != "a\nb\n" {
		t.Fatalf("-q: %v %q", err, out)
	}
}
