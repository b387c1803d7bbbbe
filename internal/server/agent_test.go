package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
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

// TestAgentThroughTheAPI: a VM whose "guest" is a real agent server behind
// a hybrid-vsock socket (Firecracker's CONNECT protocol, played here) is
// driven through the daemon's upgraded API connection: the CLI's path.
// Exec keeps stdout, stderr and the exit code apart; a copy goes both ways
// with its mode; readiness answers without an upgrade; a VM without the
// agent answers NotSupported, and a stopped one FailedPrecondition.
func TestAgentThroughTheAPI(t *testing.T) {
	testutil.RequireRoot(t) // the agent runs commands as root by default
	dir := t.TempDir()
	l := layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := store.Open(ctx, l.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := daemon.New(daemon.Config{Layout: l, Drivers: vmm.Registry{"fake": vmmtest.New()}, DefaultVMM: "fake",
		GracefulTimeout: 5 * time.Second, KillTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)}, st)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(l.ControlSocket(), -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(svc, slog.New(slog.DiscardHandler)), ConnContext: ConnContext}
	go srv.Serve(ln)
	c := client.New(l.ControlSocket())
	kernel, rootfs := testutil.FakeImageFiles(t, dir)
	def, err := c.ImportImage(ctx, api.ImportImageRequest{Name: "default", Kernel: kernel, Rootfs: rootfs})
	if err != nil {
		t.Fatal(err)
	}
	im, err := st.ResolveImage(ctx, def.ID)
	if err != nil {
		t.Fatal(err)
	}
	im.ID, im.Name = system.NewID(), "with-agent"
	im.Manifest, _ = json.Marshal(api.ImageManifest{Agent: &api.ImageAgent{Path: agent.BinaryPath, Protocol: agent.ProtocolVersion}})
	if err := st.InsertImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web", "plain"} {
		img := "with-agent"
		if name == "plain" {
			img = "default"
		}
		if _, err := c.CreateVM(ctx, api.CreateVMRequest{Name: name, Image: img, VCPUs: 1, MemoryMiB: 128, Start: true}); err != nil {
			t.Fatal(err)
		}
	}
	// web's "guest": an agent behind a hybrid vsock socket.
	agentSrv, err := agent.NewServer(slog.New(slog.DiscardHandler), quietSystem{}, "test")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "web.vsock")
	vln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	go func() {
		for {
			conn, err := vln.Accept()
			if err != nil {
				return
			}
			go func() {
				if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "CONNECT 1024\n" {
					conn.Close()
					return
				}
				conn.Write([]byte("OK 1073741824\n"))
				_ = agentSrv.ServeConn(actx, conn)
			}()
		}
	}()
	v, err := st.ResolveVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	fakeVsock := v.Runtime.VsockPath
	v.VMM, v.Runtime.VsockPath = vmm.KindFirecracker, sock
	if err := st.UpdateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.VMM, v.Runtime.VsockPath = "fake", fakeVsock
		st.UpdateVM(ctx, v)
		for _, name := range []string{"web", "plain"} {
			c.DeleteVM(ctx, name)
		}
		cancel()
		vln.Close()
		srv.Close()
		st.Close()
	})

	status, err := c.WaitAgent(ctx, "web", time.Minute)
	if err != nil || status.Protocol != agent.ProtocolVersion || status.Build != "test" {
		t.Fatalf("wait agent: %+v %v", status, err)
	}
	conn, _, err := c.DialAgent(ctx, "web", 0)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := agent.NewClient(ctx, slog.New(slog.DiscardHandler), conn)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	var out, errb bytes.Buffer
	es, err := ac.Exec(ctx, agent.ExecOptions{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, Stdout: &out, Stderr: &errb})
	if err != nil || es.Code != 3 || out.String() != "out\n" || errb.String() != "err\n" {
		t.Fatalf("exec: %+v %v stdout %q stderr %q", es, err, out.String(), errb.String())
	}
	src := filepath.Join(dir, "src.bin")
	os.WriteFile(src, bytes.Repeat([]byte("banger"), 50000), 0o600)
	os.Chmod(src, 0o640)
	if err := ac.CopyTo(ctx, src, filepath.Join(dir, "in-guest.bin")); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(dir, "back.bin")
	if err := ac.CopyFrom(ctx, filepath.Join(dir, "in-guest.bin"), back); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(back)
	fi, _ := os.Stat(back)
	if !bytes.Equal(a, b) || fi.Mode().Perm() != 0o640 {
		t.Fatalf("copy round trip: equal %v, mode %v", bytes.Equal(a, b), fi.Mode())
	}
	// A second session on the same daemon connection to the agent.
	conn2, _, err := c.DialAgent(ctx, "web", 0)
	if err != nil {
		t.Fatal(err)
	}
	ac2, err := agent.NewClient(ctx, slog.New(slog.DiscardHandler), conn2)
	if err != nil {
		t.Fatal(err)
	}
	if es, err := ac2.Exec(ctx, agent.ExecOptions{Argv: []string{"true"}}); err != nil || es.Code != 0 {
		t.Fatalf("second session: %+v %v", es, err)
	}
	ac2.Close()

	if _, _, err := c.DialAgent(ctx, "plain", 0); !errors.Is(err, errdefs.ErrNotSupported) || !strings.Contains(err.Error(), "no banger-agent") {
		t.Fatalf("vm without agent: %v", err)
	}
	if _, err := c.WaitAgent(ctx, "ghost", 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown vm: %v", err)
	}
	if _, err := c.StopVM(ctx, "plain", 0, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.DialAgent(ctx, "plain", 0); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("stopped vm: %v", err)
	}
}
