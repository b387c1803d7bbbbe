// Package e2e drives the real banger binary against a private daemon that
// boots real guests. It needs root and QEMU: it runs when BANGER_VM_TESTS=1
// (the README's test command sets it) and fails, never skips, when that is
// set on a host that is not ready.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// EnvVMM picks the driver the suite runs with: qemu here; firecracker on a
// KVM host that has it.
const EnvVMM = "BANGER_TEST_VMM"

func vmmKind() string {
	if k := os.Getenv(EnvVMM); k != "" {
		return k
	}
	return "qemu"
}

var (
	buildOnce sync.Once
	binDir    string // made by bangerBinary, removed by TestMain
	binPath   string
	buildErr  error

	imageOnce sync.Once
	img       testimage.Image
	imageErr  error
)

// TestMain removes the binaries the tests built, whatever the tests did.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		if err := os.RemoveAll(binDir); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: remove the test binaries: %v\n", err)
		}
	}
	os.Exit(code)
}

// bangerBinary builds cmd/banger and cmd/bangerd once per test process,
// side by side: `banger daemon` runs the bangerd next to it.
func bangerBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "banger-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		binPath = filepath.Join(dir, "banger")
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/banger", "./cmd/bangerd")
		// Static: the image builder installs bangerd in guests as
		// banger-agent.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// testImage builds (or reuses from the cache) the small test guest.
func testImage(t testing.TB) testimage.Image {
	t.Helper()
	imageOnce.Do(func() {
		if err := testimage.CheckHost(); err != nil {
			imageErr = err
			return
		}
		cache := os.Getenv("BANGER_TEST_CACHE")
		if cache == "" {
			cache = testimage.DefaultCacheDir
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		img, imageErr = testimage.Build(ctx, cache)
	})
	if imageErr != nil {
		t.Fatalf("test image: %v", imageErr)
	}
	return img
}

// daemon is a private banger daemon with its own state and runtime dirs,
// running with every CLI call in a network namespace of its own, so the
// host's network is never touched.
type daemon struct {
	t        testing.TB
	netns    string
	bin      string
	stateDir string
	runDir   string
	logFile  string
	proc     *daemonProc // shared by the copies subtests make (with)
	flags    []string    // extra daemon flags
}

func requireE2E(t testing.TB) {
	t.Helper()
	testutil.RequireVMs(t)
}

// startDaemon starts a daemon on fresh temporary dirs; t.Cleanup deletes
// every VM it still has, stops it and checks nothing was left behind.
func startDaemon(t testing.TB, flags ...string) *daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgr-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, proc: &daemonProc{}, flags: flags, netns: filepath.Base(dir), bin: bangerBinary(t), stateDir: filepath.Join(dir, "state"), runDir: filepath.Join(dir, "run"), logFile: filepath.Join(dir, "daemon.log")}
	if out, err := exec.Command("ip", "netns", "add", d.netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", d.netns, err, out)
	}
	// The namespace needs its loopback for published ports reached from it.
	if out, err := exec.Command("ip", "-n", d.netns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	d.start()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(d.logFile)
			t.Logf("daemon log (last 4 KiB):\n%s", tail(b, 4096))
		}
		vms := d.listVMs()
		for _, v := range vms {
			if _, err := d.run("vm", "delete", v.ID); err != nil {
				t.Errorf("cleanup: delete %s: %v", v.Name, err)
			}
		}
		d.stop()
		d.assertNoLeaks()
		if out, err := exec.Command("ip", "netns", "delete", d.netns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v %s", d.netns, err, out)
		}
		os.RemoveAll(dir)
	})
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	p := &daemonProc{cmd: d.command(append([]string{"daemon", "--log-file", d.logFile, "--graceful-timeout", "30s"}, d.flags...)...)}
	*d.proc = *p
	d.proc.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.proc.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	d.proc.exited = exited
	cmd := d.proc.cmd
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := d.run("vm", "list"); err == nil {
			return
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(d.logFile)
			d.t.Fatalf("daemon exited at start:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatal("daemon did not answer within 15s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the daemon with SIGTERM, as a service manager would.
func (d *daemon) stop() {
	if d.proc.cmd == nil || d.proc.cmd.Process == nil {
		return
	}
	d.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.proc.exited:
	case <-time.After(30 * time.Second):
		d.proc.cmd.Process.Kill()
		<-d.proc.exited
		d.t.Error("daemon did not exit within 30s of SIGTERM")
	}
	d.proc.cmd = nil
}

// daemonProc is the running daemon process.
type daemonProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// command is banger with args, in the daemon's namespace and dirs.
func (d *daemon) command(args ...string) *exec.Cmd {
	full := append([]string{"netns", "exec", d.netns, d.bin, "--state-dir", d.stateDir, "--runtime-dir", d.runDir}, args...)
	cmd := exec.Command("ip", full...)
	return cmd
}

// result is one CLI invocation.
type result struct {
	stdout, stderr string
	code           int
}

// run invokes the CLI; a non-zero exit is an error carrying the result.
func (d *daemon) run(args ...string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := d.command(args...)
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
		return r, fmt.Errorf("banger %s: exit %d: %s", strings.Join(args, " "), r.code, strings.TrimSpace(r.stderr))
	}
	return r, err
}

// must runs the CLI and fails the test on a non-zero exit.
func (d *daemon) must(args ...string) string {
	d.t.Helper()
	r, err := d.run(args...)
	if err != nil {
		d.t.Fatal(err)
	}
	return r.stdout
}

// fails runs the CLI expecting exit code want; it returns stderr.
func (d *daemon) fails(want int, args ...string) string {
	d.t.Helper()
	r, err := d.run(args...)
	if err == nil {
		d.t.Fatalf("banger %s succeeded, want exit %d", strings.Join(args, " "), want)
	}
	if r.code != want {
		d.t.Fatalf("banger %s: exit %d, want %d; stderr: %s", strings.Join(args, " "), r.code, want, r.stderr)
	}
	return r.stderr
}

func (d *daemon) show(ref string) api.VM {
	d.t.Helper()
	var v api.VM
	if err := json.Unmarshal([]byte(d.must("vm", "show", ref, "-o", "json")), &v); err != nil {
		d.t.Fatal(err)
	}
	return v
}

func (d *daemon) listVMs() []api.VM {
	r, err := d.run("vm", "list", "-o", "json")
	if err != nil {
		d.t.Errorf("list vms: %v", err)
		return nil
	}
	var vms []api.VM
	json.Unmarshal([]byte(r.stdout), &vms)
	return vms
}

func (d *daemon) ops(ref string) []api.Operation {
	d.t.Helper()
	var ops []api.Operation
	if err := json.Unmarshal([]byte(d.must("vm", "ops", ref, "-o", "json")), &ops); err != nil {
		d.t.Fatal(err)
	}
	return ops
}

// importTestImage imports the cached test guest as the default image.
func (d *daemon) importTestImage() {
	d.t.Helper()
	im := testImage(d.t)
	kernel := im.Kernel
	if vmmKind() == "firecracker" {
		kernel = im.Vmlinux // Firecracker boots only an ELF vmlinux
	}
	d.must("image", "import", "default", "--kernel", kernel, "--initrd", im.Initrd, "--rootfs", im.Rootfs)
}

// createVM makes a small VM with the suite's driver.
func (d *daemon) createVM(name string, extra ...string) api.VM {
	d.t.Helper()
	args := append([]string{"vm", "create", name, "--cpus", "1", "--memory", "256M", "--vmm", vmmKind(), "-o", "json"}, extra...)
	var v api.VM
	if err := json.Unmarshal([]byte(d.must(args...)), &v); err != nil {
		d.t.Fatal(err)
	}
	return v
}

// waitLog waits until the VM's log (read through `banger vm logs`) holds
// want n times, failing after timeout with the log's tail.
func (d *daemon) waitLog(ref, want string, n int, timeout time.Duration) string {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		logs := d.must("vm", "logs", ref)
		if strings.Count(logs, want) >= n {
			return logs
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%q did not appear %d time(s) in the log of %s within %s; log tail:\n%s", want, n, ref, timeout, tail([]byte(logs), 3000))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// vmmProcesses lists the live VMM processes whose command line mentions
// this daemon's state dir.
func (d *daemon) vmmProcesses() []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(d.stateDir)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue // exited, waiting for its parent to reap it
		}
		if name := filepath.Base(string(bytes.SplitN(cmdline, []byte{0}, 2)[0])); name == "banger" || name == "bangerd" {
			continue // the daemon or the CLI
		}
		out = append(out, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
	}
	return out
}

// assertNoLeaks checks that no VMM process, VM dir or runtime file is left.
func (d *daemon) assertNoLeaks() {
	d.t.Helper()
	// A VM's log forwarder drains its pipe after the VMM is gone, then
	// exits: give it a few seconds on a loaded host.
	for i := 0; i < 50 && len(d.vmmProcesses()) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if p := d.vmmProcesses(); len(p) > 0 {
		d.t.Errorf("leaked VMM processes:\n%s", strings.Join(p, "\n"))
		// Reported, then ended: a failed test leaves nothing running.
		for _, line := range p {
			if pid, err := strconv.Atoi(strings.SplitN(line, ":", 2)[0]); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(d.stateDir, "vms")); len(entries) > 0 {
		d.t.Errorf("leaked vm dirs: %v", entries)
	}
	if entries, _ := os.ReadDir(d.runDir); len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		d.t.Errorf("leaked runtime files: %v", names)
	}
	// Every VM is deleted: no tap, published port or host-key pin may remain.
	if links, _ := exec.Command("ip", "-n", d.netns, "-o", "link", "show").CombinedOutput(); strings.Contains(string(links), "tap-fc-") {
		d.t.Errorf("leaked taps:\n%s", links)
	}
	if rules, err := exec.Command("ip", "netns", "exec", d.netns, "nft", "list", "chain", "inet", "banger", "publish").CombinedOutput(); err == nil && strings.Contains(string(rules), "dnat") {
		d.t.Errorf("leaked publish rules:\n%s", rules)
	}
	if pins, _ := os.ReadFile(filepath.Join(d.stateDir, "ssh", "known_hosts")); len(strings.TrimSpace(string(pins))) > 0 {
		d.t.Errorf("leaked host-key pins:\n%s", pins)
	}
}

func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func itoa(n int) string { return fmt.Sprint(n) }

func mustJSON(t testing.TB, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
}

// withBuildDaemon runs fn against a second daemon on this daemon's state dir
// with a second daemon in the host's network namespace (image builds
// download from Debian's archive; the test namespace has no way out) and
// --no-network, so the host's network is still left alone. The test's
// daemon is stopped meanwhile: one daemon owns a state dir at a time.
func (d *daemon) withBuildDaemon(fn func(cli func(args ...string) (result, error))) {
	d.t.Helper()
	d.stop()
	defer d.start()
	builder := exec.Command(d.bin, "--state-dir", d.stateDir, "--runtime-dir", d.runDir, "daemon", "--no-network",
		"--log-file", d.logFile, "--package-cache", filepath.Join(cacheDir(), "apt"))
	builder.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := builder.Start(); err != nil {
		d.t.Fatal(err)
	}
	defer func() {
		builder.Process.Signal(syscall.SIGTERM)
		builder.Wait()
	}()
	cli := func(args ...string) (result, error) {
		c := exec.Command(d.bin, append([]string{"--state-dir", d.stateDir, "--runtime-dir", d.runDir}, args...)...)
		var o, e bytes.Buffer
		c.Stdout, c.Stderr = &o, &e
		err := c.Run()
		r := result{stdout: o.String(), stderr: e.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.code = ee.ExitCode()
			err = fmt.Errorf("banger %s: exit %d: %s", strings.Join(args, " "), r.code, tail(e.Bytes(), 3000))
		}
		return r, err
	}
	for i := 0; ; i++ {
		if _, err := cli("image", "list"); err == nil {
			break
		}
		if i > 300 {
			d.t.Fatal("the build daemon did not answer")
		}
		time.Sleep(50 * time.Millisecond)
	}
	fn(cli)
}

// buildDefaultImage runs `banger image build` (see withBuildDaemon).
func (d *daemon) buildDefaultImage() (stdout, stderr string) {
	d.t.Helper()
	d.withBuildDaemon(func(cli func(args ...string) (result, error)) {
		r, err := cli("image", "build", "-o", "json")
		if err != nil {
			d.t.Fatalf("image build: %v", err)
		}
		stdout, stderr = r.stdout, r.stderr
	})
	return stdout, stderr
}
