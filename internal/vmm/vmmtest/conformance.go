package vmmtest

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Target is one driver under the conformance suite, with what the suite
// needs around it.
type Target struct {
	Driver vmm.Driver
	// Spec returns a valid spec for a fresh VM: its files (kernel, disk,
	// sockets, log) exist or are placed under directories t removes.
	Spec func(t *testing.T) vmm.Spec
	// BootMarker is a line the guest prints on its console (the VM log)
	// once it has booted.
	BootMarker string
	// BootTimeout and ShutdownTimeout bound the guest's boot and its
	// power-off after Shutdown; default 90 s and 30 s.
	BootTimeout, ShutdownTimeout time.Duration
}

// RunConformance runs the rules every vmm.Driver must keep, each as a
// subtest with a fresh Target from newTarget:
//
//   - Launch reports the VMM through Spec.OnSpawn before it returns, and
//     returns that same, live process; Boot boots the guest.
//   - Shutdown makes the guest power off and the VMM process exit by itself.
//   - Once the VMM is gone, Boot and Shutdown fail (the exit is reported,
//     not hidden).
//   - vmm.Kill ends a running VMM.
//   - Cleanup removes the control and vsock sockets, and a second Cleanup
//     succeeds.
//   - An OnSpawn error fails Launch with that error and leaves no process.
//   - A missing root disk fails Launch and leaves no process.
//   - Validate refuses a bad spec with an invalid-argument error and
//     changes nothing; Launch refuses it too and starts nothing.
//
// No process started by a subtest outlives it: one still alive at the end
// fails the subtest (and is killed).
func RunConformance(t *testing.T, newTarget func(t *testing.T) Target) {
	t.Run("LaunchBootShutdown", func(t *testing.T) {
		tg := newTarget(t)
		spec := tg.Spec(t)
		ctx := context.Background()
		if err := tg.Driver.Validate(spec); err != nil {
			t.Fatalf("Validate of a good spec: %v", err)
		}
		spawned := track(t, &spec)
		p, err := tg.Driver.Launch(ctx, spec)
		if err != nil {
			t.Fatalf("Launch: %v\n%s", err, readLog(spec))
		}
		if got := spawned.list(); len(got) != 1 || got[0] != p {
			t.Fatalf("OnSpawn saw %v, Launch returned %v: want the same single process", got, p)
		}
		if !system.Alive(p.PID, p.StartTime) {
			t.Fatalf("Launch returned pid %d, which is not running", p.PID)
		}
		if err := tg.Driver.Boot(ctx, spec); err != nil {
			t.Fatalf("Boot: %v\n%s", err, readLog(spec))
		}
		if err := waitConsole(spec, p, tg.BootMarker, cmp.Or(tg.BootTimeout, 90*time.Second)); err != nil {
			t.Fatalf("boot: %v\n%s", err, readLog(spec))
		}
		if err := tg.Driver.Shutdown(ctx, spec); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if !system.WaitExit(ctx, p.PID, p.StartTime, cmp.Or(tg.ShutdownTimeout, 30*time.Second)) {
			t.Fatalf("the VMM is still running %s after Shutdown\n%s", cmp.Or(tg.ShutdownTimeout, 30*time.Second), readLog(spec))
		}
		// The exit is visible to the daemon: the VM cannot be driven any more.
		if err := tg.Driver.Shutdown(ctx, spec); err == nil {
			t.Error("Shutdown of a VM whose VMM exited succeeded")
		}
		if err := tg.Driver.Boot(ctx, spec); err == nil {
			t.Error("Boot of a VM whose VMM exited succeeded")
		}
		cleanupTwice(t, tg.Driver, spec)
	})

	t.Run("Kill", func(t *testing.T) {
		tg := newTarget(t)
		spec := tg.Spec(t)
		ctx := context.Background()
		track(t, &spec)
		p, err := tg.Driver.Launch(ctx, spec)
		if err != nil {
			t.Fatalf("Launch: %v\n%s", err, readLog(spec))
		}
		if err := tg.Driver.Boot(ctx, spec); err != nil {
			t.Fatalf("Boot: %v", err)
		}
		if err := vmm.Kill(ctx, p); err != nil {
			t.Fatalf("Kill: %v", err)
		}
		if system.Alive(p.PID, p.StartTime) {
			t.Fatal("the VMM is alive after Kill")
		}
		if err := tg.Driver.Shutdown(ctx, spec); err == nil {
			t.Error("Shutdown of a killed VM succeeded")
		}
		cleanupTwice(t, tg.Driver, spec)
	})

	t.Run("OnSpawnFailure", func(t *testing.T) {
		tg := newTarget(t)
		spec := tg.Spec(t)
		spawned := track(t, &spec)
		refused := errors.New("the store refused the pid")
		inner := spec.OnSpawn
		spec.OnSpawn = func(p vmm.Process) error {
			_ = inner(p)
			return refused
		}
		if _, err := tg.Driver.Launch(context.Background(), spec); !errors.Is(err, refused) {
			t.Fatalf("Launch with a failing OnSpawn: %v, want the OnSpawn error", err)
		}
		for _, p := range spawned.list() {
			if system.Alive(p.PID, p.StartTime) {
				t.Errorf("pid %d still running after Launch failed", p.PID)
			}
		}
		cleanupTwice(t, tg.Driver, spec)
	})

	t.Run("MissingRootDisk", func(t *testing.T) {
		tg := newTarget(t)
		spec := tg.Spec(t)
		spec.RootDisk = filepath.Join(filepath.Dir(spec.RootDisk), "no-such-disk")
		spawned := track(t, &spec)
		if _, err := tg.Driver.Launch(context.Background(), spec); err == nil {
			t.Fatal("Launch with a missing root disk succeeded")
		}
		for _, p := range spawned.list() {
			if system.Alive(p.PID, p.StartTime) {
				t.Errorf("pid %d still running after Launch failed", p.PID)
			}
		}
		cleanupTwice(t, tg.Driver, spec)
	})

	t.Run("BadSpec", func(t *testing.T) {
		tg := newTarget(t)
		for name, spoil := range map[string]func(*vmm.Spec){
			"no vcpus":          func(s *vmm.Spec) { s.VCPUs = 0 },
			"negative vcpus":    func(s *vmm.Spec) { s.VCPUs = -1 },
			"16 MiB":            func(s *vmm.Spec) { s.MemoryMiB = 16 },
			"no kernel":         func(s *vmm.Spec) { s.Kernel = "" },
			"no root disk":      func(s *vmm.Spec) { s.RootDisk = "" },
			"no control socket": func(s *vmm.Spec) { s.ControlSocket = "" },
			"no log":            func(s *vmm.Spec) { s.LogPath = "" },
		} {
			t.Run(name, func(t *testing.T) {
				spec := tg.Spec(t)
				spoil(&spec)
				spawned := track(t, &spec)
				before := listing(t, spec.VMDir)
				if err := tg.Driver.Validate(spec); !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("Validate: %v, want an invalid-argument error", err)
				}
				if after := listing(t, spec.VMDir); !slices.Equal(before, after) {
					t.Errorf("Validate changed the vm dir: %v, then %v", before, after)
				}
				if _, err := tg.Driver.Launch(context.Background(), spec); !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("Launch: %v, want the invalid-argument error Validate gives", err)
				}
				if n := len(spawned.list()); n > 0 {
					t.Errorf("Launch of a bad spec started %d process(es)", n)
				}
			})
		}
	})
}

// spawns records what OnSpawn saw.
type spawns struct {
	mu sync.Mutex
	ps []vmm.Process
}

func (s *spawns) list() []vmm.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ps)
}

// track sets spec.OnSpawn to record each process, and has t fail (and kill
// it) if one is still running when t ends.
func track(t *testing.T, spec *vmm.Spec) *spawns {
	s := &spawns{}
	spec.OnSpawn = func(p vmm.Process) error {
		s.mu.Lock()
		s.ps = append(s.ps, p)
		s.mu.Unlock()
		return nil
	}
	t.Cleanup(func() {
		for _, p := range s.list() {
			if system.Alive(p.PID, p.StartTime) {
				t.Errorf("vmm pid %d outlived the test: killing it", p.PID)
				if err := vmm.Kill(context.Background(), p); err != nil {
					t.Error(err)
				}
			}
		}
	})
	return s
}

func cleanupTwice(t *testing.T, d vmm.Driver, spec vmm.Spec) {
	t.Helper()
	ctx := context.Background()
	if err := d.Cleanup(ctx, spec); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	for _, p := range []string{spec.ControlSocket, spec.VsockPath} {
		if p == "" {
			continue
		}
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Cleanup (%v)", p, err)
		}
	}
	if err := d.Cleanup(ctx, spec); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
}

// waitConsole waits until the VM log holds marker, the process exits or
// timeout passes.
func waitConsole(spec vmm.Spec, p vmm.Process, marker string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(spec.LogPath)
		if bytes.Contains(b, []byte(marker)) {
			return nil
		}
		if !system.Alive(p.PID, p.StartTime) {
			if b, _ := os.ReadFile(spec.LogPath); bytes.Contains(b, []byte(marker)) {
				return nil
			}
			return errors.New("the VMM exited before the guest printed " + marker)
		}
		if time.Now().After(deadline) {
			return errors.New(marker + " not on the console within " + timeout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readLog(spec vmm.Spec) string {
	b, _ := os.ReadFile(spec.LogPath)
	return string(b)
}

func listing(t *testing.T, dir string) []string {
	t.Helper()
	if dir == "" {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
