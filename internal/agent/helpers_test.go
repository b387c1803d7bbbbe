package agent

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/identity"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// socketPair returns the two ends of a connected unix stream socket pair.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// fakeSystem records the side effects asked of it.
type fakeSystem struct {
	mu        sync.Mutex
	hostname  string
	machineID string
	network   *NetworkIdentity
	netDNS    []netip.Addr
	dns       []netip.Addr
	clock     time.Time
	entropy   []byte
	keys      []ssh.PublicKey
	shutdown  chan bool
	synced    int // Sync calls
}

func newFakeSystem() *fakeSystem { return &fakeSystem{shutdown: make(chan bool, 1)} }

func (f *fakeSystem) SetHostname(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hostname = name
	return nil
}

func (f *fakeSystem) SetMachineID(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.machineID = id
	return nil
}

func (f *fakeSystem) ConfigureNetwork(n NetworkIdentity, dns []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.network, f.netDNS = &n, dns
	return nil
}

func (f *fakeSystem) SetDNS(servers []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dns = servers
	return nil
}

func (f *fakeSystem) NewHostKeys() ([]ssh.PublicKey, error) {
	keys, err := identity.NewHostKeys()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys = keys.PublicKeys()
	return f.keys, nil
}

func (f *fakeSystem) SetClock(t time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clock = t
	return nil
}

func (f *fakeSystem) AddEntropy(data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entropy = append([]byte(nil), data...)
	return nil
}

func (f *fakeSystem) Shutdown(reboot bool) error {
	f.shutdown <- reboot
	return nil
}

func (f *fakeSystem) BootID() string { return "boot-1" }

func (f *fakeSystem) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.synced++
	return nil
}

// startAgent serves an agent with sys on one end of a socket pair and
// returns a client connected to it.
func startAgent(t *testing.T, sys System, opts ...ServerOption) *Client {
	t.Helper()
	c, err := dialAgent(t, sys, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func dialAgent(t *testing.T, sys System, opts ...ServerOption) (*Client, error) {
	t.Helper()
	host, guestEnd := socketPair(t)
	srv, err := NewServer(testLogger(t), sys, "test-build", opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.ServeConn(ctx, guestEnd)
	}()
	t.Cleanup(func() {
		cancel()
		<-served
	})
	c, err := NewClient(context.Background(), testLogger(t), host)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
