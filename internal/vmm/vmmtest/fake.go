// Package vmmtest holds the driver conformance suite (RunConformance),
// which every vmm.Driver runs, and a fake VMM driver for unit tests of the
// daemon's lifecycle rules and error paths. Its "VMM" is a real process (a
// small shell loop in its own session), so liveness, signals, process
// identity and timeouts are exercised for real; only the guest is missing.
// It is never a substitute for the end-to-end tests with real QEMU guests.
package vmmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Fake is a scriptable vmm.Driver.
type Fake struct {
	mu     sync.Mutex
	calls  []string
	procs  map[string][]vmm.Process // by VM id, every launch kept: leak checks see them all
	paused map[string]bool          // by VM id (snapshot.go)

	// Hooks run at the start of each method; a non-nil error fails it.
	OnLaunch func(ctx context.Context, spec vmm.Spec) error
	OnBoot   func(ctx context.Context, spec vmm.Spec) error
	// OnShutdown runs before the "guest" is told to power off.
	OnShutdown func(ctx context.Context, spec vmm.Spec) error
	// OnSpawned runs once the VMM process exists, before Launch waits on it.
	OnSpawned func(spec vmm.Spec)
	// FailCleanup makes Cleanup fail.
	FailCleanup error
	// IgnoreShutdown makes the "guest" ignore Ctrl-Alt-Del.
	IgnoreShutdown bool
	// IgnoreTERM makes the VMM process ignore SIGTERM.
	IgnoreTERM bool
	// Info is what Probe reports; Kind defaults to "fake".
	Info vmm.Info
}

var _ vmm.Driver = (*Fake)(nil)

// New returns a fake driver reporting itself available.
func New() *Fake {
	return &Fake{procs: map[string][]vmm.Process{}, Info: vmm.Info{Kind: "fake", Available: true, Reason: "test double"}}
}

func (f *Fake) record(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

// Calls returns the methods called so far, like "launch web".
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// Count returns how many calls start with prefix.
func (f *Fake) Count(method string) int {
	n := 0
	for _, c := range f.Calls() {
		if len(c) >= len(method) && c[:len(method)] == method {
			n++
		}
	}
	return n
}

// Process returns the process last launched for a VM.
func (f *Fake) Process(id string) vmm.Process {
	f.mu.Lock()
	defer f.mu.Unlock()
	ps := f.procs[id]
	if len(ps) == 0 {
		return vmm.Process{}
	}
	return ps[len(ps)-1]
}

// Processes returns every process launched.
func (f *Fake) Processes() []vmm.Process {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []vmm.Process
	for _, ps := range f.procs {
		out = append(out, ps...)
	}
	return out
}

func (f *Fake) Kind() string { return f.Info.Kind }

func (f *Fake) Probe(context.Context) vmm.Info { return f.Info }

// Validate refuses what every driver refuses (RunConformance's bad specs).
func (f *Fake) Validate(spec vmm.Spec) error {
	switch {
	case spec.VCPUs < 1:
		return errdefs.InvalidArgument("fake: vcpus %d: at least one is needed", spec.VCPUs)
	case spec.MemoryMiB < 64:
		return errdefs.InvalidArgument("fake: memory %d MiB is too small", spec.MemoryMiB)
	case spec.Kernel == "" || spec.RootDisk == "" || spec.ControlSocket == "" || spec.LogPath == "":
		return errdefs.InvalidArgument("fake: incomplete vm spec: kernel, root disk, control socket and log path are required")
	}
	return nil
}

// BootLine is what the fake "guest" writes to the VM log on Boot.
const BootLine = "[fake guest] booted"

// SignalLog is where the fake VMM writes the signals it traps.
func SignalLog(spec vmm.Spec) string { return filepath.Join(spec.VMDir, "signals") }

func (f *Fake) Launch(ctx context.Context, spec vmm.Spec) (vmm.Process, error) {
	f.record("launch " + spec.Name)
	if f.OnLaunch != nil {
		if err := f.OnLaunch(ctx, spec); err != nil {
			return vmm.Process{}, err
		}
	}
	if err := f.Validate(spec); err != nil {
		return vmm.Process{}, err
	}
	if _, err := os.Stat(spec.RootDisk); err != nil {
		return vmm.Process{}, errdefs.FailedPrecondition("fake: root disk: %w", err)
	}
	if spec.Restore != nil {
		if err := f.checkRestore(spec); err != nil {
			return vmm.Process{}, err
		}
	}
	termAction := `echo TERM >> "$0"; exit 0`
	if f.IgnoreTERM {
		termAction = `echo TERM-ignored >> "$0"`
	}
	script := `trap '` + termAction + `' TERM; trap 'echo INT >> "$0"; exit 0' INT; trap 'echo USR1 >> "$0"; exit 0' USR1; trap 'echo USR2 >> "$0"; exit 0' USR2; : > "$1"; while kill -0 "$2" 2>/dev/null; do sleep 0.05; done`
	// The fake outlives the daemon, as a VMM does, but never the test
	// process that made it: killed tests leave no fake behind ($2).
	p, err := vmm.SpawnFor(spec, "/bin/sh", []string{"-c", script, SignalLog(spec), spec.ControlSocket, strconv.Itoa(os.Getpid())})
	if err != nil {
		return vmm.Process{}, err
	}
	// Like a real VMM, it is ready once its "control socket" (a plain file
	// here, which Cleanup must remove) exists: its traps are set by then.
	for !fileExists(spec.ControlSocket) {
		if !system.Alive(p.PID, p.StartTime) {
			return vmm.Process{}, errors.New("fake: vmm exited during launch")
		}
		if ctx.Err() != nil {
			_ = vmm.Kill(context.WithoutCancel(ctx), p)
			return vmm.Process{}, ctx.Err()
		}
		time.Sleep(5 * time.Millisecond)
	}
	f.mu.Lock()
	f.procs[spec.ID] = append(f.procs[spec.ID], p)
	f.mu.Unlock()
	if f.OnSpawned != nil {
		f.OnSpawned(spec)
	}
	return p, nil
}

func (f *Fake) Boot(ctx context.Context, spec vmm.Spec) error {
	f.record("boot " + spec.Name)
	if f.OnBoot != nil {
		if err := f.OnBoot(ctx, spec); err != nil {
			return err
		}
	}
	p := f.Process(spec.ID)
	if !system.Alive(p.PID, p.StartTime) {
		return fmt.Errorf("fake: vm %s is not running", spec.Name)
	}
	log, err := os.OpenFile(spec.LogPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	_, err = log.WriteString(BootLine + "\n")
	return err
}

// Shutdown stands for Ctrl-Alt-Del: the "guest" powers off, so the VMM
// process exits (it is sent SIGUSR1, which it treats as power-off).
func (f *Fake) Shutdown(ctx context.Context, spec vmm.Spec) error {
	f.record("shutdown " + spec.Name)
	if f.OnShutdown != nil {
		if err := f.OnShutdown(ctx, spec); err != nil {
			return err
		}
	}
	if f.IgnoreShutdown {
		return nil
	}
	p := f.Process(spec.ID)
	if !system.Alive(p.PID, p.StartTime) {
		return fmt.Errorf("fake: vm %s is not running", spec.Name)
	}
	return system.Signal(p.PID, p.StartTime, syscall.SIGUSR1)
}

func (f *Fake) Cleanup(_ context.Context, spec vmm.Spec) error {
	f.record("cleanup " + spec.Name)
	if f.FailCleanup != nil {
		return f.FailCleanup
	}
	if spec.ControlSocket == "" {
		return nil
	}
	if err := os.Remove(spec.ControlSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
