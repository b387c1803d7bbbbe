package firecracker

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker/fctest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from this run")

// TestMain lets this test binary play firecracker and jailer: the driver
// then runs it through vmm.Spawn, waits for its socket and configures it
// over HTTP, exactly as it would a real Firecracker.
func TestMain(m *testing.M) {
	if code, fake := fctest.RunIfFake(); fake {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// testID is a VM id as the daemon makes them (system.NewID).
const testID = "0123456789abcdef0123456789abcdef"

type opts struct {
	jailer    JailerMode // default off
	faults    []string   // fctest.Key values answered with a fault
	ignoreCAD bool       // the guest ignores Ctrl-Alt-Del
	// release, if set, is the name of the fake firecracker file, and
	// bin/firecracker is a symlink to it, as releases are installed.
	release string
}

// harness is one VM's worth of files, fake binaries and a driver. All of it
// lives in a short temporary directory (unix socket paths are short), and
// t.Cleanup proves that no process started for it outlives the test.
type harness struct {
	t      *testing.T
	dir    string
	events string
	spec   vmm.Spec
	drv    *Driver
	// execName is the name of the real (not symlinked) firecracker file,
	// which names the jail.
	execName string
}

func newHarness(t *testing.T, o opts) *harness {
	t.Helper()
	if o.jailer == JailerOn {
		// Each jailed VM runs as its own user: only root can lend it files.
		testutil.RequireRoot(t)
	}
	specPath, err := fctest.SpecPath()
	if err != nil {
		t.Fatal(err) // without the API specification there is nothing to test against
	}
	dir, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &harness{t: t, dir: dir, events: filepath.Join(dir, "events.jsonl")}
	t.Cleanup(h.checkLeaks)
	for _, d := range []string{"bin", "img", "vm", "run"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "img", "vmlinux"), elfKernel(hostMachine()), 0o644)
	writeFile(t, filepath.Join(dir, "img", "initrd.img"), []byte("initrd"), 0o644)
	writeFile(t, filepath.Join(dir, "vm", "rootfs.ext4"), []byte("rootfs contents"), 0o600)
	env := map[string]string{fctest.EnvSpec: specPath, fctest.EnvEvents: h.events}
	if len(o.faults) > 0 {
		env[fctest.EnvFaults] = strings.Join(o.faults, ";")
	}
	if o.ignoreCAD {
		env[fctest.EnvIgnoreCtrlAltDel] = "1"
	}
	h.execName = "firecracker"
	if o.release != "" {
		h.execName = o.release
		if err := os.Symlink(o.release, filepath.Join(dir, "bin", "firecracker")); err != nil {
			t.Fatal(err)
		}
	}
	if err := fctest.WriteFake(filepath.Join(dir, "bin", h.execName), "firecracker", env); err != nil {
		t.Fatal(err)
	}
	if err := fctest.WriteFake(filepath.Join(dir, "bin", "jailer"), "jailer", map[string]string{fctest.EnvEvents: h.events}); err != nil {
		t.Fatal(err)
	}
	h.spec = vmm.Spec{
		ID: testID, Name: "test", VCPUs: 2, MemoryMiB: 256,
		Kernel:        filepath.Join(dir, "img", "vmlinux"),
		Initrd:        filepath.Join(dir, "img", "initrd.img"),
		KernelArgs:    "root=/dev/vda rw panic=1",
		RootDisk:      filepath.Join(dir, "vm", "rootfs.ext4"),
		ControlSocket: filepath.Join(dir, "run", "fc-01234567.sock"),
		VsockPath:     filepath.Join(dir, "run", "fc-01234567.vsock"),
		VsockCID:      3,
		Tap:           "tap-fc-01234567",
		MAC:           "02:fc:00:00:00:01",
		LogPath:       filepath.Join(dir, "vm", "vm.log"),
		VMDir:         filepath.Join(dir, "vm"),
	}
	mode := o.jailer
	if mode == "" {
		mode = JailerOff
	}
	h.drv = h.driver(Config{Jailer: mode})
	return h
}

// driver returns a driver for the harness's fake binaries, with cfg's
// non-zero fields on top. KVM is reported usable: this host has none.
func (h *harness) driver(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = filepath.Join(h.dir, "bin", "firecracker")
	}
	if cfg.JailerBinary == "" {
		cfg.JailerBinary = filepath.Join(h.dir, "bin", "jailer")
	}
	if cfg.ChrootBase == "" {
		cfg.ChrootBase = filepath.Join(h.dir, "jail")
	}
	d := New(cfg)
	d.kvmUsable = func(string) (bool, string) { return true, "kvm faked by the test" }
	return d
}

func (h *harness) jailDir() string {
	return filepath.Join(h.dir, "jail", h.execName, testID)
}

func (h *harness) readEvents() []fctest.Event {
	h.t.Helper()
	ev, err := fctest.ReadEvents(h.events)
	if err != nil {
		h.t.Fatal(err)
	}
	return ev
}

func (h *harness) requests() []fctest.Request {
	var reqs []fctest.Request
	for _, e := range h.readEvents() {
		if e.Kind == "request" {
			reqs = append(reqs, *e.Request)
		}
	}
	return reqs
}

func (h *harness) execs() []fctest.Event {
	var ex []fctest.Event
	for _, e := range h.readEvents() {
		if e.Kind == "exec" {
			ex = append(ex, e)
		}
	}
	return ex
}

// assertSpecClean fails on any request the API specification rejects.
func (h *harness) assertSpecClean() {
	h.t.Helper()
	for _, r := range h.requests() {
		if r.Violation != "" {
			h.t.Errorf("%s %s: %s", r.Method, r.Path, r.Violation)
		}
	}
}

// transcript renders what the fakes saw, one line per exec or request,
// with the temporary directory made stable.
func (h *harness) transcript() string {
	var b strings.Builder
	for _, e := range h.readEvents() {
		switch e.Kind {
		case "exec":
			fmt.Fprintf(&b, "exec %s %s\n", e.Prog, strings.Join(e.Argv, " "))
		case "request":
			r := e.Request
			fmt.Fprintf(&b, "%s %s", r.Method, r.Path)
			if len(r.Body) > 0 {
				fmt.Fprintf(&b, " %s", r.Body)
			}
			if r.Status/100 != 2 {
				fmt.Fprintf(&b, " => %d %s", r.Status, r.Fault)
			}
			b.WriteString("\n")
		}
	}
	return strings.ReplaceAll(b.String(), h.dir, "$DIR")
}

func (h *harness) golden(name string) {
	h.t.Helper()
	got := h.transcript()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			h.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatalf("%v (hint: go test -run %s -update)", err, h.t.Name())
	}
	if got != string(want) {
		h.t.Errorf("requests differ from %s (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// checkLeaks fails the test if a process started for it is still alive: a
// fake that recorded its start, or any process whose environment points at
// this harness's events file.
func (h *harness) checkLeaks() {
	deadline := time.Now().Add(3 * time.Second)
	for {
		live := h.liveProcesses()
		if len(live) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, pid := range live {
				h.t.Errorf("process %d outlived the test", pid)
				_ = system.Signal(pid, 0, syscall.SIGKILL)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) liveProcesses() []int {
	var live []int
	ev, _ := fctest.ReadEvents(h.events)
	for _, e := range ev {
		if e.Kind == "exec" && system.Alive(e.PID, 0) && !slices.Contains(live, e.PID) {
			live = append(live, e.PID)
		}
	}
	marker := []byte(fctest.EnvEvents + "=" + h.events + "\x00")
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "environ"))
		if err != nil || !strings.Contains(string(env), string(marker)) {
			continue
		}
		if system.Alive(pid, 0) && !slices.Contains(live, pid) {
			live = append(live, pid)
		}
	}
	return live
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if mode&0o111 != 0 {
		if err := testutil.WriteExecutable(path, data); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func hostMachine() uint16 {
	if runtime.GOARCH == "arm64" {
		return 183
	}
	return 62
}

// elfKernel is the 64-byte header of an ELF64 executable for machine: all
// Validate reads of a vmlinux.
func elfKernel(machine uint16) []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1               // ELFCLASS64, little endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2) // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], machine)
	binary.LittleEndian.PutUint32(h[20:], 1)
	return h
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
