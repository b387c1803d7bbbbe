package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
)

// fakeDaemon answers the API calls of `vm run` on a unix socket in
// runtimeDir; start decides how POST .../start ends.
type fakeDaemon struct {
	mu      sync.Mutex
	created []api.CreateVMRequest
	deleted []string
	started chan struct{} // closed when a start request arrives
}

func startFakeDaemon(t *testing.T, runtimeDir string, start func(w http.ResponseWriter, r *http.Request)) *fakeDaemon {
	t.Helper()
	d := &fakeDaemon{started: make(chan struct{})}
	var once sync.Once
	vm := api.VM{ID: "0123456789abcdef0123456789abcdef", Name: "web", State: "stopped"}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		var req api.CreateVMRequest
		json.NewDecoder(r.Body).Decode(&req)
		d.mu.Lock()
		d.created = append(d.created, req)
		d.mu.Unlock()
		json.NewEncoder(w).Encode(vm)
	})
	mux.HandleFunc("POST /v1/vms/{ref}/start", func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(d.started) })
		start(w, r)
	})
	mux.HandleFunc("DELETE /v1/vms/{ref}", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.deleted = append(d.deleted, r.PathValue("ref"))
		d.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	l, err := net.Listen("unix", filepath.Join(runtimeDir, "banger.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return d
}

func (d *fakeDaemon) calls() ([]api.CreateVMRequest, []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]api.CreateVMRequest(nil), d.created...), append([]string(nil), d.deleted...)
}

// TestRunRmDeletesWhenStartFails: with --rm, a VM whose start fails or is
// interrupted is deleted, not left behind.
func TestRunRmDeletesWhenStartFails(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	check := func(t *testing.T, d *fakeDaemon, err error, wantExit int) {
		t.Helper()
		if got := cli.ExitCode(err); got != wantExit {
			t.Errorf("exit %d (%v), want %d", got, err, wantExit)
		}
		created, deleted := d.calls()
		if len(created) != 1 || created[0].Start {
			t.Errorf("create requests %+v, want one without start", created)
		}
		if len(deleted) != 1 || deleted[0] != id {
			t.Errorf("deleted %q, want [%s]", deleted, id)
		}
	}

	t.Run("start fails", func(t *testing.T) {
		dir := t.TempDir()
		d := startFakeDaemon(t, dir, func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusPreconditionFailed)
			json.NewEncoder(w).Encode(api.ErrorResponse{Error: api.Error{Class: string(errdefs.ClassFailedPrecondition), Message: "boom"}})
		})
		_, err := runCtx(context.Background(), dir, "vm", "run", "--rm", "web", "--", "true")
		check(t, d, err, cli.ExitFailedPrecondition)
	})

	t.Run("interrupted during start", func(t *testing.T) {
		dir := t.TempDir()
		d := startFakeDaemon(t, dir, func(_ http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // a start that never ends: the client gives up
		})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-d.started:
				cancel() // what Ctrl-C does (signal.NotifyContext in main)
			case <-time.After(10 * time.Second):
			}
		}()
		_, err := runCtx(ctx, dir, "vm", "run", "--rm", "web", "--", "true")
		check(t, d, err, cli.ExitInternal)
	})
}

// runCtx executes the CLI with args and ctx against the daemon in runtimeDir.
func runCtx(ctx context.Context, runtimeDir string, args ...string) (string, error) {
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--runtime-dir", runtimeDir}, args...))
	err := root.ExecuteContext(ctx)
	return out.String(), err
}
