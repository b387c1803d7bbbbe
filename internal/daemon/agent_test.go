package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// quietSystem is a guest that changes nothing.
type quietSystem struct{}

func (quietSystem) SetHostname(string) error                                   { return nil }
func (quietSystem) SetMachineID(string) error                                  { return nil }
func (quietSystem) ConfigureNetwork(agent.NetworkIdentity, []netip.Addr) error { return nil }
func (quietSystem) SetDNS([]netip.Addr) error                                  { return nil }
func (quietSystem) NewHostKeys() ([]ssh.PublicKey, error)                      { return nil, nil }
func (quietSystem) SetClock(time.Time) error                                   { return nil }
func (quietSystem) AddEntropy([]byte) error                                    { return nil }
func (quietSystem) Shutdown(bool) error                                        { return nil }
func (quietSystem) BootID() string                                             { return "boot-1" }
func (quietSystem) Sync() error                                                { return nil }

// fakeHybridVsock serves Firecracker's hybrid vsock protocol on a unix
// socket ("CONNECT <port>\n", "OK <n>\n") with a real agent server of
// protocol version proto behind it. It counts the connections.
func fakeHybridVsock(t *testing.T, path string, proto int) *atomic.Int32 {
	t.Helper()
	srv, err := agent.NewServer(slog.New(slog.DiscardHandler), quietSystem{}, "test", agent.WithProtocolVersion(proto))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil || line != "CONNECT 1024\n" {
					c.Close()
					return
				}
				c.Write([]byte("OK 1073741824\n"))
				_ = srv.ServeConn(ctx, c)
			}()
		}
	}()
	return &n
}

// agentVM starts a VM of an image that has (withAgent) or has not the
// agent, and records it as a Firecracker VM whose hybrid vsock is served by
// fakeHybridVsock; the record goes back to the fake driver at cleanup.
func agentVM(t *testing.T, e *env, withAgent bool, proto int) (*model.VM, *atomic.Int32) {
	t.Helper()
	ctx := context.Background()
	def, err := e.st.ResolveImage(ctx, DefaultImage)
	if err != nil {
		t.Fatal(err)
	}
	im := *def
	im.ID, im.Name = system.NewID(), "with-agent"
	if withAgent {
		im.Manifest, _ = json.Marshal(api.ImageManifest{Agent: &api.ImageAgent{Path: agent.BinaryPath, Protocol: proto}})
	} else {
		im.Name = "no-agent"
	}
	if err := e.st.InsertImage(ctx, &im); err != nil {
		t.Fatal(err)
	}
	v, err := e.svc.CreateVM(ctx, api.CreateVMRequest{Name: "web", Image: im.Name, VCPUs: 1, MemoryMiB: 128})
	if err != nil {
		t.Fatal(err)
	}
	if v, err = e.svc.StartVM(ctx, v.Name); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "v.vsock")
	n := fakeHybridVsock(t, sock, proto)
	fakeVsock := v.Runtime.VsockPath
	v.VMM, v.Runtime.VsockPath = vmm.KindFirecracker, sock
	if err := e.st.UpdateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v, err := e.st.ResolveVM(ctx, "web")
		if err != nil {
			return
		}
		v.VMM, v.Runtime.VsockPath = "fake", fakeVsock
		e.st.UpdateVM(ctx, v)
	})
	return v, n
}

// TestAgentConnectionIsSharedAndDroppedAtStop: one connection per VM,
// reused by every request, closed when the VM stops.
func TestAgentConnectionIsSharedAndDroppedAtStop(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, accepts := agentVM(t, e, true, agent.ProtocolVersion)
	c, _, err := e.svc.Agent(ctx, "web", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if c.Version().Protocol != agent.ProtocolVersion {
		t.Fatalf("agent version %+v", c.Version())
	}
	c2, _, err := e.svc.Agent(ctx, "web", 0)
	if err != nil || c2 != c || accepts.Load() != 1 {
		t.Fatalf("second request: %v, same client %v, %d connections", err, c2 == c, accepts.Load())
	}
	if note := e.svc.View(ctx, e.get("web")).Agent; !strings.Contains(note, "protocol 1 over vsock") {
		t.Fatalf("vm show: agent %q", note)
	}
	// Back to the fake driver to stop it; the release closes the connection.
	v := e.get("web")
	v.VMM = "fake"
	e.st.UpdateVM(ctx, v)
	if _, err := e.svc.StopVM(ctx, "web", StopOptions{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent connection outlived the VM's stop")
	}
}

// TestAgentOfAnotherVersionIsRefusedClearly: no hang, FailedPrecondition,
// both versions named.
func TestAgentOfAnotherVersionIsRefusedClearly(t *testing.T) {
	e := newEnv(t)
	agentVM(t, e, true, agent.ProtocolVersion+1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _, err := e.svc.Agent(ctx, "web", time.Minute)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "protocol 2") || !strings.Contains(err.Error(), "speaks 1") || ctx.Err() != nil {
		t.Fatalf("err = %v (ctx %v)", err, ctx.Err())
	}
}

// TestNoAgentFallsBackToSSH: an image without the agent gives NotSupported
// (the CLI then uses SSH) and vm show says so.
func TestNoAgentFallsBackToSSH(t *testing.T) {
	e := newEnv(t)
	_, accepts := agentVM(t, e, false, agent.ProtocolVersion)
	_, _, err := e.svc.Agent(context.Background(), "web", time.Minute)
	if !errors.Is(err, errdefs.ErrNotSupported) || !strings.Contains(err.Error(), "no banger-agent") || accepts.Load() != 0 {
		t.Fatalf("err = %v, %d connections", err, accepts.Load())
	}
	if note := e.svc.View(context.Background(), e.get("web")).Agent; note != NoAgentNote {
		t.Fatalf("vm show: agent %q", note)
	}
}
