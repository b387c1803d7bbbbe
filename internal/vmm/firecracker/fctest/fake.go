package fctest

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/banger-vm/banger/internal/testutil"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// FakeVersion is the version the fake binaries report.
const FakeVersion = "1.16.1"

// Environment of a test binary acting as firecracker or jailer.
const (
	EnvFake   = "BANGER_FAKE_VMM"    // "firecracker" or "jailer"
	EnvEvents = "BANGER_FAKE_EVENTS" // file the fakes append Events to
	// EnvFaults lists Keys, separated by ';', answered with a 400 fault
	// whose message is "injected fault at <key>".
	EnvFaults = "BANGER_FAKE_FAULTS"
	// EnvIgnoreCtrlAltDel plays a guest without an i8042 driver: the
	// process keeps running after SendCtrlAltDel.
	EnvIgnoreCtrlAltDel = "BANGER_FAKE_IGNORE_CTRL_ALT_DEL"
	// Set by the fake jailer for the fake firecracker it execs.
	EnvJailRoot = "BANGER_FAKE_JAIL_ROOT"
	EnvJailUID  = "BANGER_FAKE_JAIL_UID"
	EnvJailGID  = "BANGER_FAKE_JAIL_GID"
)

// Console lines the fake firecracker prints on stdout, where Firecracker
// copies the guest's serial console.
const (
	ConsoleBoot   = "[fake guest] Linux version 6.1.0 booting"
	ConsoleReboot = "[fake guest] reboot: Restarting system"
)

// InjectedFault is the fault_message answered for an injected key.
func InjectedFault(key string) string { return "injected fault at " + key }

// Event is one line of the events file: a fake binary starting, or a
// request the double answered.
type Event struct {
	Kind    string   `json:"kind"` // "exec" or "request"
	Prog    string   `json:"prog,omitempty"`
	Argv    []string `json:"argv,omitempty"`
	PID     int      `json:"pid,omitempty"`
	Request *Request `json:"request,omitempty"`
}

// ReadEvents reads an events file; a missing file has no events.
func ReadEvents(path string) ([]Event, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var events []Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("events file %s: %w", path, err)
		}
		events = append(events, e)
	}
	return events, sc.Err()
}

func appendEvent(e Event) {
	path := os.Getenv(EnvEvents)
	if path == "" {
		return
	}
	b, _ := json.Marshal(e)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake:", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(b, '\n')) // one write: lines from two processes do not interleave
}

// WriteFake writes an executable script at path that runs this test binary
// as the fake kind ("firecracker" or "jailer") with env set. A script, not
// the process environment, carries the settings, so tests with different
// settings can run in parallel, and a jailer that clears the environment
// does not lose them.
func WriteFake(path, kind string, env map[string]string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	fmt.Fprintf(&b, "export %s=%s\n", EnvFake, shellQuote(kind))
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(env[k]))
	}
	fmt.Fprintf(&b, "exec %s \"$@\"\n", shellQuote(self))
	return testutil.WriteExecutable(path, []byte(b.String()))
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// RunIfFake runs the fake binary named by $BANGER_FAKE_VMM, if any, and
// returns its exit code. Call it first thing in TestMain.
func RunIfFake() (code int, fake bool) {
	switch os.Getenv(EnvFake) {
	case "firecracker":
		return runFirecracker(os.Args[1:]), true
	case "jailer":
		return runJailer(os.Args[1:]), true
	}
	return 0, false
}

// runFirecracker plays Firecracker: --version, or the API double on
// --api-sock until the guest "powers off" after Ctrl-Alt-Del.
func runFirecracker(args []string) int {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "/run/firecracker.socket", "")
	id := fs.String("id", "anonymous-instance", "")
	version := fs.Bool("version", false, "")
	fs.Uint64("start-time-us", 0, "")
	fs.Uint64("start-time-cpu-us", 0, "")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "Arguments parsing error: unexpected arguments %q\n", fs.Args())
		return 1
	}
	if *version {
		fmt.Printf("Firecracker v%s\n\n", FakeVersion)
		return 0
	}
	appendEvent(Event{Kind: "exec", Prog: "firecracker", Argv: args, PID: os.Getpid()})
	specPath, err := SpecPath()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 1
	}
	spec, err := LoadSpec(specPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 1
	}
	srv := NewServer(spec)
	srv.ID = *id
	srv.Version = FakeVersion
	srv.Root = os.Getenv(EnvJailRoot)
	if srv.Root != "" {
		srv.UID, _ = strconv.Atoi(os.Getenv(EnvJailUID))
		srv.GID, _ = strconv.Atoi(os.Getenv(EnvJailGID))
	}
	srv.Faults = map[string]string{}
	for _, k := range strings.Split(os.Getenv(EnvFaults), ";") {
		if k != "" {
			srv.Faults[k] = InjectedFault(k)
		}
	}
	srv.OnRecord = func(r Request) { appendEvent(Event{Kind: "request", Request: &r}) }
	srv.OnStart = func() { fmt.Println(ConsoleBoot) }
	done := make(chan struct{})
	srv.OnCtrlAltDel = func() {
		if os.Getenv(EnvIgnoreCtrlAltDel) != "" {
			fmt.Println("[fake guest] Ctrl-Alt-Del ignored (no i8042 driver)")
			return
		}
		time.Sleep(20 * time.Millisecond)
		fmt.Println(ConsoleReboot)
		close(done)
	}
	l, err := net.Listen("unix", srv.resolve(*apiSock))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker: Failed to open the API socket:", err)
		return 1
	}
	// Firecracker leaves its sockets behind when it exits: removing them
	// is the driver's Cleanup.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	go func() { _ = http.Serve(l, srv) }()
	<-done
	srv.Close()
	l.Close()
	return 0
}

// jailerID is jailer.md's rule for --id.
var jailerID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// runJailer plays the jailer as jailer.md describes it, minus what needs
// a real chroot: it validates the flags, builds
// <chroot_base>/<exec_file_name>/<id>/root, copies the exec file into it,
// hands the root to uid:gid and execs the copy with --id and the start
// times, followed by the arguments after "--". The exec'd fake firecracker
// resolves its paths under the jail root instead of being chrooted.
func runJailer(args []string) int {
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	id := fs.String("id", "", "")
	execFile := fs.String("exec-file", "", "")
	uid := fs.String("uid", "", "")
	gid := fs.String("gid", "", "")
	cgroupVersion := fs.String("cgroup-version", "1", "")
	chrootBase := fs.String("chroot-base-dir", "/srv/jailer", "")
	fs.String("parent-cgroup", "", "")
	fs.String("netns", "", "")
	var cgroups, limits []string
	fs.Func("cgroup", "", func(s string) error { cgroups = append(cgroups, s); return nil })
	fs.Func("resource-limit", "", func(s string) error { limits = append(limits, s); return nil })
	daemonize := fs.Bool("daemonize", false, "")
	newPIDNS := fs.Bool("new-pid-ns", false, "")
	version := fs.Bool("version", false, "")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if *version {
		fmt.Printf("Jailer v%s\n\n", FakeVersion)
		return 0
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "Jailer error: "+format+"\n", a...)
		return 1
	}
	appendEvent(Event{Kind: "exec", Prog: "jailer", Argv: args, PID: os.Getpid()})
	switch {
	case *id == "" || *execFile == "" || *uid == "" || *gid == "":
		return fail("--id, --exec-file, --uid and --gid are required")
	case !jailerID.MatchString(*id):
		return fail("invalid id %q", *id)
	case *cgroupVersion != "1" && *cgroupVersion != "2":
		return fail("invalid cgroup version %q", *cgroupVersion)
	case *chrootBase == "/srv/jailer":
		return fail("the fake jailer will not touch the default chroot base /srv/jailer")
	case *daemonize || *newPIDNS:
		return fail("the fake jailer does not model --daemonize or --new-pid-ns")
	case len(cgroups) > 0 || len(limits) > 0:
		return fail("the fake jailer does not model --cgroup or --resource-limit")
	}
	u, err1 := strconv.Atoi(*uid)
	g, err2 := strconv.Atoi(*gid)
	if err1 != nil || err2 != nil || u < 0 || g < 0 {
		return fail("invalid uid:gid %s:%s", *uid, *gid)
	}
	// The jailer canonicalises --exec-file: the jail is named after, and
	// holds a copy of, the file a symlink points to.
	resolved, err := filepath.EvalSymlinks(*execFile)
	if err != nil {
		return fail("exec file %s: %v", *execFile, err)
	}
	fi, err := os.Stat(resolved)
	if err != nil || !fi.Mode().IsRegular() {
		return fail("exec file %s: %v", resolved, err)
	}
	name := filepath.Base(resolved)
	if !strings.Contains(name, "firecracker") {
		return fail("Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": %s", name)
	}
	root := filepath.Join(*chrootBase, name, *id, "root")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fail("%v", err)
	}
	exe := filepath.Join(root, name)
	if err := copyExec(resolved, exe); err != nil {
		return fail("copy exec file: %v", err)
	}
	if err := os.Chown(root, u, g); err != nil {
		return fail("%v", err)
	}
	if err := os.Chdir(root); err != nil {
		return fail("%v", err)
	}
	argv := append([]string{name, "--id=" + *id, "--start-time-us=0", "--start-time-cpu-us=0"}, fs.Args()...)
	env := []string{EnvJailRoot + "=" + root, EnvJailUID + "=" + *uid, EnvJailGID + "=" + *gid, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	err = syscall.Exec(exe, argv, env)
	return fail("exec %s: %v", exe, err)
}

func copyExec(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
