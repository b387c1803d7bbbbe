package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

// syncBuffer collects the daemon's JSON log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	t      *testing.T
	svc    *Service
	st     *store.Store
	fake   *vmmtest.Fake
	layout layout.Layout
	logs   *syncBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	l := layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), l.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	fake := vmmtest.New()
	svc, err := New(Config{
		Layout: l, Drivers: vmm.Registry{"fake": fake}, DefaultVMM: "fake",
		GracefulTimeout: 5 * time.Second, KillTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, st)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, svc: svc, st: st, fake: fake, layout: l, logs: logs}
	kernel, rootfs := testutil.FakeImageFiles(t, dir)
	if _, err := svc.ImportImage(context.Background(), api.ImportImageRequest{Name: DefaultImage, Kernel: kernel, Rootfs: rootfs}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Leak check: no fake VMM process may outlive its test.
		vms, _ := st.ListVMs(context.Background())
		for _, v := range vms {
			if err := svc.DeleteVM(context.Background(), v.ID); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
		for _, p := range fake.Processes() {
			if alive(p) {
				t.Errorf("leak: fake vmm pid %d outlived the test", p.PID)
			}
		}
		if n := svc.locks.size(); n != 0 {
			t.Errorf("leak: %d vm locks still held or awaited", n)
		}
		if entries, _ := os.ReadDir(l.RuntimeDir); len(entries) != 0 {
			t.Errorf("leak: runtime files %v", entries)
		}
		if entries, _ := os.ReadDir(l.VMsDir()); len(entries) != 0 {
			t.Errorf("leak: vm dirs %v", entries)
		}
		st.Close()
	})
	return e
}

func (e *env) create(name string) *model.VM {
	e.t.Helper()
	v, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: name, VCPUs: 1, MemoryMiB: 128})
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) started(name string) *model.VM {
	e.t.Helper()
	e.create(name)
	v, err := e.svc.StartVM(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

func (e *env) get(ref string) *model.VM {
	e.t.Helper()
	v, err := e.st.ResolveVM(context.Background(), ref)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// lastOp returns the newest operation's stages as "name:status".
func (e *env) lastOp(ref string) (*model.Operation, []string) {
	e.t.Helper()
	ops, err := e.svc.Operations(context.Background(), ref, 1)
	if err != nil || len(ops) != 1 {
		e.t.Fatalf("ops: %v %v", ops, err)
	}
	var stages []string
	for _, st := range ops[0].Stages {
		stages = append(stages, st.Name+":"+st.Status)
	}
	return ops[0], stages
}

func alive(p vmm.Process) bool { return system.Alive(p.PID, p.StartTime) }

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func signalsOf(t *testing.T, v *model.VM) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(v.VMDir, "signals"))
	return strings.TrimSpace(string(b))
}
