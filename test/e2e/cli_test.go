package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
)

// cliCase is one invocation of the built CLI and what a user must see.
type cliCase struct {
	args   []string
	code   int
	stderr []string // each must appear in stderr (for a failure: the one error line)
	stdout []string // each must appear in stdout
}

func (d *daemon) check(t *testing.T, c cliCase) {
	t.Helper()
	r, _ := d.run(c.args...)
	what := "banger " + strings.Join(c.args, " ")
	if r.code != c.code {
		t.Errorf("%s: exit %d, want %d\nstdout: %s\nstderr: %s", what, r.code, c.code, r.stdout, r.stderr)
		return
	}
	for _, w := range c.stderr {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("%s: stderr lacks %q: %s", what, w, r.stderr)
		}
	}
	for _, w := range c.stdout {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("%s: stdout lacks %q: %s", what, w, r.stdout)
		}
	}
	if c.code != 0 {
		// The error is printed once, on stderr, as one "banger: ..." line
		// ("bangerd: ..." from daemon and doctor, which exec bangerd).
		prog := "banger"
		if len(c.args) > 0 && (c.args[0] == "daemon" || c.args[0] == "doctor") {
			prog = "bangerd"
		}
		if n := strings.Count(r.stderr, prog+":"); n != 1 || !strings.HasPrefix(r.stderr, prog+": ") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("%s: want the error once on stderr, got %q", what, r.stderr)
		}
	}
}

// TestCLIConformance runs the built CLI against a real daemon: every
// command group once as it should be used, then bad invocations of each
// kind, each with its exit code and a message naming the problem.
func TestCLIConformance(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t, "--no-network")
	d.importTestImage()
	web := d.createVM("web")

	ok := []cliCase{
		{args: []string{"vm", "list"}, stdout: []string{"NAME", "web"}},
		{args: []string{"vm", "ls", "-q"}, stdout: []string{web.ID}},
		{args: []string{"vm", "show", "web"}, stdout: []string{"Name:", "web", "State:"}},
		{args: []string{"vm", "ops", "web"}, stdout: []string{"vm.create"}},
		{args: []string{"vm", "ops", "web", "-q", "-n", "1"}},
		{args: []string{"image", "list"}, stdout: []string{"NAME", "default"}},
		{args: []string{"image", "ls", "-q"}},
		{args: []string{"image", "show", "default"}, stdout: []string{"Used by:", "web"}},
		{args: []string{"version"}, stdout: []string{"Client:", "Daemon:", "API version:  " + api.Version}},
		{args: []string{"--version"}, stdout: []string{"Client:", "Daemon:"}},
		{args: []string{"vm"}, stdout: []string{"Available Commands:", "create"}},
		{args: []string{"help", "image"}, stdout: []string{"Available Commands:", "import"}},
		{args: []string{"completion", "bash"}, stdout: []string{"__complete"}},
		{args: []string{"completion", "zsh"}, stdout: []string{"__complete"}},
		{args: []string{"completion", "fish"}, stdout: []string{"__complete"}},
	}
	bad := []cliCase{
		// Unknown subcommands and stray words.
		{args: []string{"vm", "frobnicate", "web", "w2"}, code: 2, stderr: []string{`unknown command "frobnicate" for "banger vm"`, "banger vm --help"}},
		{args: []string{"image", "foo"}, code: 2, stderr: []string{`unknown command "foo" for "banger image"`}},
		{args: []string{"vm", "lst"}, code: 2, stderr: []string{`unknown command "lst"`, "did you mean 'banger vm list'?"}},
		{args: []string{"imag", "list"}, code: 2, stderr: []string{`unknown command "imag" for "banger"`, "did you mean 'banger image'?"}},
		{args: []string{"completion", "tcsh"}, code: 2, stderr: []string{`unknown command "tcsh"`}},
		{args: []string{"help", "vm", "frobnicate"}, code: 2, stderr: []string{`unknown command "frobnicate"`}},
		// Missing arguments.
		{args: []string{"vm", "create"}, code: 2, stderr: []string{"banger vm create", "accepts 1 arg(s), received 0", "usage: banger vm create NAME"}},
		{args: []string{"vm", "show"}, code: 2, stderr: []string{"banger vm show", "received 0"}},
		{args: []string{"vm", "start"}, code: 2, stderr: []string{"banger vm start", "requires at least 1 arg(s)"}},
		{args: []string{"vm", "exec", "web"}, code: 2, stderr: []string{"exec needs a VM and a command"}},
		{args: []string{"vm", "cp", "web:/etc/hostname"}, code: 2, stderr: []string{"banger vm cp", "accepts 2 arg(s), received 1"}},
		{args: []string{"image", "show"}, code: 2, stderr: []string{"banger image show", "received 0"}},
		{args: []string{"image", "import", "x", "--kernel", "/nonexistent"}, code: 2, stderr: []string{`required flag(s) "rootfs" not set`}},
		// Extra arguments.
		{args: []string{"vm", "list", "web"}, code: 2, stderr: []string{"banger vm list takes no arguments", `"web"`}},
		{args: []string{"vm", "show", "web", "extra"}, code: 2, stderr: []string{"banger vm show", "received 2"}},
		{args: []string{"image", "list", "extra"}, code: 2, stderr: []string{"banger image list takes no arguments"}},
		{args: []string{"image", "build", "a", "b"}, code: 2, stderr: []string{"banger image build", "accepts at most 1 arg(s), received 2"}},
		{args: []string{"version", "extra"}, code: 2, stderr: []string{"banger version takes no arguments"}},
		{args: []string{"doctor", "extra"}, code: 2, stderr: []string{"bangerd doctor takes no arguments"}},
		{args: []string{"daemon", "extra"}, code: 2, stderr: []string{"bangerd takes no arguments"}},
		// Unknown flags.
		{args: []string{"vm", "list", "--bogus"}, code: 2, stderr: []string{"unknown flag: --bogus", "banger vm list --help"}},
		{args: []string{"image", "show", "default", "--nope"}, code: 2, stderr: []string{"unknown flag: --nope"}},
		{args: []string{"vm", "--bogus"}, code: 2, stderr: []string{"unknown flag: --bogus"}},
		// Flag values that do not parse or make no sense.
		{args: []string{"vm", "create", "x", "--cpus", "abc"}, code: 2, stderr: []string{`invalid argument "abc" for "--cpus"`}},
		{args: []string{"vm", "create", "x", "--memory", "lots"}, code: 2, stderr: []string{`"lots" is not a size`}},
		{args: []string{"vm", "ops", "web", "-n", "x"}, code: 2, stderr: []string{`invalid argument "x" for "-n, --limit"`}},
		{args: []string{"vm", "ops", "web", "-n", "-1"}, code: 2, stderr: []string{"--limit -1 is negative"}},
		{args: []string{"vm", "stop", "web", "--timeout", "forever"}, code: 2, stderr: []string{`invalid argument "forever" for "--timeout"`}},
		{args: []string{"vm", "list", "-o", "yaml"}, code: 2, stderr: []string{`--output "yaml"`}},
	}
	for _, c := range append(ok, bad...) {
		d.check(t, c)
	}
	// None of the bad invocations changed anything.
	if vms := d.listVMs(); len(vms) != 1 || vms[0].Name != "web" {
		t.Errorf("vms after bad invocations: %+v", vms)
	}
	if ops := d.ops("web"); len(ops) != 1 {
		t.Errorf("web has %d operations after bad invocations, want its create only", len(ops))
	}
}

// readmeExitCodes parses the README's exit-code table: rows
// "| CODE | meaning | `class`, ... |".
func readmeExitCodes(t *testing.T) map[string]int {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	f, err := os.Open(filepath.Join(filepath.Dir(file), "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile(`^\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|\s*$`)
	class := regexp.MustCompile("`([a-z_]+)`")
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			code, _ := strconv.Atoi(m[1])
			for _, c := range class.FindAllStringSubmatch(m[2], -1) {
				out[c[1]] = code
			}
		}
	}
	if len(out) < 8 {
		t.Fatalf("README's exit-code table names %d classes: %v", len(out), out)
	}
	return out
}

// TestExitCodesOfEachErrorClass provokes every error class a user can meet
// for real and checks the exit code is the one the README's table gives.
func TestExitCodesOfEachErrorClass(t *testing.T) {
	requireE2E(t)
	table := readmeExitCodes(t)
	d := startDaemon(t, "--no-network")
	d.importTestImage()
	d.createVM("web")
	elsewhere := t.TempDir()
	for _, c := range []struct {
		class  string
		args   []string
		stderr string
	}{
		{"invalid_argument", []string{"vm", "create", "bad/name"}, "bad/name"},          // refused by the daemon
		{"invalid_argument", []string{"vm", "kill", "web", "--signal", "NOPE"}, "NOPE"}, // refused by the daemon
		{"not_found", []string{"vm", "show", "ghost"}, `"ghost"`},
		{"not_found", []string{"image", "delete", "ghost"}, `"ghost"`},
		{"already_exists", []string{"vm", "create", "web"}, `"web"`},
		{"conflict", []string{"daemon", "--no-network"}, "another banger daemon owns"},
		{"failed_precondition", []string{"image", "delete", "default"}, `"web"`},
		{"unavailable", []string{"--runtime-dir", elsewhere, "vm", "list"}, "daemon is not running"},
		{"not_supported", []string{"vm", "create", "pub", "--publish", "8080:80"}, "host network"},
	} {
		want, ok := table[c.class]
		if !ok {
			t.Fatalf("README's table lacks class %s", c.class)
		}
		d.check(t, cliCase{args: c.args, code: want, stderr: []string{c.stderr}})
	}
	if vms := d.listVMs(); len(vms) != 1 {
		t.Errorf("vms after failed commands: %+v", vms)
	}
}

// TestVersion checks `banger version` against a daemon: both parts, the
// daemon's being its own build (not a copy of the CLI's), and the CLI's
// part alone, exit 6, when the daemon is not there.
func TestVersion(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t, "--no-network")

	// A CLI stamped with its own version and commit at link time.
	cliBin := filepath.Join(t.TempDir(), "banger")
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", cliBin, "-ldflags",
		"-X github.com/banger-vm/banger/internal/version.version=v9.9.9-e2e -X github.com/banger-vm/banger/internal/version.commit=e2ecafe", "./cmd/banger")
	build.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cli := *d
	cli.bin = cliBin

	var daemonOwn api.Versions // the daemon binary's own client part
	mustJSON(t, d.must("version", "-o", "json"), &daemonOwn)

	var v api.Versions
	mustJSON(t, cli.must("version", "-o", "json"), &v)
	if v.Client.Version != "v9.9.9-e2e" || v.Client.Commit != "e2ecafe" || v.Client.APIVersion != api.Version {
		t.Errorf("client part: %+v", v.Client)
	}
	if v.Daemon == nil || v.DaemonError != "" {
		t.Fatalf("no daemon part: %+v", v)
	}
	if *v.Daemon != daemonOwn.Client || v.Daemon.APIVersion != api.Version {
		t.Errorf("daemon part %+v, want the daemon binary's build %+v", *v.Daemon, daemonOwn.Client)
	}
	cli.check(t, cliCase{args: []string{"--version"}, stdout: []string{"v9.9.9-e2e", "e2ecafe", "Daemon:", daemonOwn.Client.Version}})

	// No daemon: the client part, and exit 6 saying so.
	r, _ := cli.run("--runtime-dir", t.TempDir(), "version", "-o", "json")
	var alone api.Versions
	mustJSON(t, r.stdout, &alone)
	if r.code != 6 || alone.Client.Version != "v9.9.9-e2e" || alone.Daemon != nil || !strings.Contains(alone.DaemonError, "not running") ||
		!strings.Contains(r.stderr, "daemon is not running") {
		t.Errorf("version without a daemon: exit %d %+v stderr %q", r.code, alone, r.stderr)
	}
	cli.check(t, cliCase{args: []string{"--runtime-dir", t.TempDir(), "version"}, code: 6,
		stdout: []string{"Client:", "v9.9.9-e2e", "unavailable"}, stderr: []string{"daemon is not running"}})
}

// TestCompletion checks cobra's dynamic completion asks the daemon for VM
// and image names (what the shell scripts call on <TAB>).
func TestCompletion(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t, "--no-network")
	d.importTestImage()
	d.createVM("web")
	d.createVM("db")
	names := func(args ...string) []string {
		t.Helper()
		out := d.must(append([]string{"__complete"}, args...)...)
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.HasPrefix(line, ":") { // the directive
				continue
			}
			got = append(got, strings.SplitN(line, "\t", 2)[0])
		}
		slices.Sort(got)
		return got
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "start", ""}, "db web"},
		{[]string{"vm", "start", "w"}, "web"},
		{[]string{"vm", "delete", "web", ""}, "db"}, // a name given once is not offered again
		{[]string{"vm", "show", ""}, "db web"},
		{[]string{"vm", "show", "web", ""}, ""}, // show takes one VM
		{[]string{"vm", "ssh", "d"}, "db"},
		{[]string{"vm", "create", "x", "--image", ""}, "default"},
		{[]string{"image", "show", ""}, "default"},
		{[]string{"vm", "create", ""}, ""}, // a new name is not guessed
	} {
		got := names(c.args...)
		if strings.Join(got, " ") != c.want {
			t.Errorf("complete %q: %q, want %q", c.args, got, c.want)
		}
	}
	// The state is the description the shell shows next to the name.
	if out := d.must("__complete", "vm", "start", "w"); !strings.Contains(out, "web\tstopped") {
		t.Errorf("completion lacks the state: %q", out)
	}
}
