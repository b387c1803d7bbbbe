package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/testutil"
)

// testCIDR is the guest network every test uses inside its namespaces.
const testCIDR = "10.201.0.0/24"

// env is one test's world: a throwaway network namespace standing in for
// the host (the Manager works there), and more namespaces for guests and
// "the internet". Everything is removed in t.Cleanup and a leak check
// proves it: no namespace left (no mount, no fd, no thread of this process
// in it) and none of the test's links in the real host namespace.
type env struct {
	t    *testing.T
	stem string
	host netns.NsHandle // the "host" namespace
	nl   *netlink.Handle
	m    *Manager
	mu   sync.Mutex
	nss  map[string]netns.NsHandle // role -> namespace, host included
}

func newEnv(t *testing.T, configure ...func(*Config)) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{t: t, stem: nsStem(t), nss: map[string]netns.NsHandle{}}

	// The links this test may create, checked absent from the real host
	// namespace after cleanup (unless they were there before).
	before := hostLinkNames(t)
	t.Cleanup(func() {
		after := hostLinkNames(t)
		for name := range after {
			if !before[name] && (name == DefaultBridge || strings.HasPrefix(name, TapPrefix) || strings.HasPrefix(name, "vt-")) {
				t.Errorf("leak: link %q appeared in the host's own network namespace", name)
			}
		}
	})

	e.host = e.netns("host")
	nl, err := netlink.NewHandleAt(e.host)
	if err != nil {
		t.Fatal(err)
	}
	e.nl = nl
	t.Cleanup(nl.Close)
	pool, err := NewPool(testCIDR)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Pool: pool, NetNS: e.host}
	for _, f := range configure {
		f(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close manager: %v", err)
		}
	})
	return e
}

// nsStem derives short, unique names from the test's name (and the pid,
// so two runs of the suite on one machine do not collide).
func nsStem(t *testing.T) string {
	h := fnv.New32a()
	h.Write([]byte(t.Name()))
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimPrefix(t.Name(), "Test")) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
		if b.Len() == 12 {
			break
		}
	}
	return fmt.Sprintf("bn-%s-%04x-%d", b.String(), h.Sum32()&0xffff, os.Getpid())
}

func (e *env) nsName(role string) string { return e.stem + "-" + role }

// netns creates the named namespace stem-role with lo up, and registers
// its removal and leak check.
func (e *env) netns(role string) netns.NsHandle {
	t := e.t
	t.Helper()
	name := e.nsName(role)
	mustHostNS(t)
	netnsDirOnce.Do(func() { netnsDirErr = shareNetnsDir() })
	if netnsDirErr != nil {
		t.Fatalf("prepare /run/netns: %v", netnsDirErr)
	}
	var ns netns.NsHandle
	err := inThread(func() error {
		// NewNamed moves this thread into the new namespace; inThread's
		// thread dies afterwards, so nothing else ever runs there.
		var err error
		ns, err = netns.NewNamed(name)
		return err
	})
	if err != nil {
		t.Fatalf("create network namespace %q: %v", name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		t.Fatal(err)
	}
	ino := st.Ino
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete network namespace %q: %v", name, err)
		}
		checkNSGone(t, name, ino)
	})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("set lo up in %q: %v", name, err)
	}
	e.mu.Lock()
	e.nss[role] = ns
	e.mu.Unlock()
	return ns
}

var (
	netnsDirOnce sync.Once
	netnsDirErr  error
)

// shareNetnsDir makes /run/netns a shared mount of its own, as ip-netns(8)
// does before it names a namespace. Otherwise the first `ip netns add` of
// another process (say a test running in parallel) stacks a bind mount on
// /run/netns that hides the namespaces named here: they could then never
// be unmounted, and would leak.
func shareNetnsDir() error {
	const dir = "/run/netns"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if !errors.Is(err, unix.EINVAL) {
		return err // nil: already a mount point
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
}

// checkNSGone fails the test when namespace ino is still reachable: its
// name mounted, or an fd or a thread of this process in it (threads that
// entered it exit with their goroutine; give them a moment).
func checkNSGone(t *testing.T, name string, ino uint64) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("/run/netns", name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leak: /run/netns/%s still exists", name)
	}
	want := fmt.Sprintf("net:[%d]", ino)
	var holders []string
	for deadline := time.Now().Add(3 * time.Second); ; {
		holders = holders[:0]
		for _, pattern := range []string{"/proc/self/fd/*", "/proc/self/task/*/ns/net"} {
			paths, _ := filepath.Glob(pattern)
			for _, p := range paths {
				if target, err := os.Readlink(p); err == nil && target == want {
					holders = append(holders, p)
				}
			}
		}
		if len(holders) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(holders) > 0 {
		t.Errorf("leak: network namespace %q is still held by %v", name, holders)
	}
}

func hostLinkNames(t *testing.T) map[string]bool {
	t.Helper()
	h, err := netlink.NewHandleAt(mustHostNS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, l := range links {
		names[l.Attrs().Name] = true
	}
	return names
}

var (
	hostNSOnce sync.Once
	hostNS     netns.NsHandle
)

// mustHostNS is the namespace this test process started in.
func mustHostNS(t *testing.T) netns.NsHandle {
	hostNSOnce.Do(func() {
		var err error
		hostNS, err = netns.GetFromPath("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
	})
	return hostNS
}

// inThread runs fn on a locked thread and puts the thread back in this
// process's namespace afterwards (or discards it).
func inThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if netns.Set(hostNS) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// guest makes namespace role a stand-in guest: a veth whose host end is
// attached to the bridge as CreateTap attaches a tap, addr on eth0, default
// route via the gateway.
func (e *env) guest(role, hostEnd string, addr netip.Addr) netns.NsHandle {
	t := e.t
	t.Helper()
	ns := e.netns(role)
	br, err := e.nl.LinkByName(e.m.Bridge())
	if err != nil {
		t.Fatal(err)
	}
	e.veth(hostEnd, ns, netip.PrefixFrom(addr, 24), e.m.Pool().Gateway())
	end, err := e.nl.LinkByName(hostEnd)
	if err == nil {
		err = e.m.attach(end, br) // the bridge port set up exactly as a tap's
	}
	if err != nil {
		t.Fatalf("attach %q to the bridge: %v", hostEnd, err)
	}
	return ns
}

// veth creates hostEnd in the host namespace and its peer "eth0" in ns,
// with addr (and a default route via gw when valid) on the peer.
func (e *env) veth(hostEnd string, ns netns.NsHandle, addr netip.Prefix, gw netip.Addr) {
	t := e.t
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostEnd}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := e.nl.LinkAdd(v); err != nil {
		t.Fatalf("create veth %q: %v", hostEnd, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err == nil {
		err = h.AddrAdd(eth0, nlAddr(addr))
	}
	if err == nil {
		err = h.LinkSetUp(eth0)
	}
	if err == nil && gw.IsValid() {
		err = h.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()})
	}
	if err != nil {
		t.Fatalf("set up the peer of %q: %v", hostEnd, err)
	}
	end, err := e.nl.LinkByName(hostEnd)
	if err == nil {
		err = e.nl.LinkSetUp(end)
	}
	if err != nil {
		t.Fatal(err)
	}
	// A link carries packets once the kernel's link watcher has handled its
	// carrier (up to a second later): wait for that, both ends.
	waitFor(t, hostEnd+" and its peer operationally up", func() bool {
		a, err1 := e.nl.LinkByName(hostEnd)
		b, err2 := h.LinkByName("eth0")
		return err1 == nil && err2 == nil && a.Attrs().OperState == netlink.OperUp && b.Attrs().OperState == netlink.OperUp
	})
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
}

// serve listens on addr inside ns; each connection gets one line,
// "NAME REMOTEADDR", so the client learns who answered and what source
// address the server saw.
func serve(t *testing.T, ns netns.NsHandle, name, addr string) {
	t.Helper()
	var ln net.Listener
	err := inNetNS(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
}

// serveUDP answers each datagram on addr inside ns with "NAME REMOTEADDR".
func serveUDP(t *testing.T, ns netns.NsHandle, name, addr string) {
	t.Helper()
	var pc net.PacketConn
	err := inNetNS(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on udp %s in %s: %v", addr, name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from.(*net.UDPAddr).IP), from)
		}
	}()
}

// ask connects from ns to addr and returns the server's line.
func ask(ns netns.NsHandle, network, addr string) (string, error) {
	return askFrom(ns, network, nil, addr)
}

// askFrom is ask from a given local address (nil: any).
func askFrom(ns netns.NsHandle, network string, local net.Addr, addr string) (string, error) {
	var c net.Conn
	err := inNetNS(ns, func() error {
		var err error
		d := net.Dialer{Timeout: 700 * time.Millisecond, LocalAddr: local}
		c, err = d.DialContext(context.Background(), network, addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp4" {
		if _, err := c.Write([]byte("hi")); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// expectAnswer asserts that addr, dialled from ns, is answered with want.
func expectAnswer(t *testing.T, what string, ns netns.NsHandle, network, addr, want string) {
	t.Helper()
	got, err := ask(ns, network, addr)
	if err != nil {
		t.Errorf("%s: %s %s: %v", what, network, addr, err)
		return
	}
	if got != want {
		t.Errorf("%s: %s %s answered %q, want %q", what, network, addr, got, want)
	}
}

// expectNoAnswer asserts that addr, dialled from ns, does not answer.
func expectNoAnswer(t *testing.T, what string, ns netns.NsHandle, network, addr string) {
	t.Helper()
	if got, err := ask(ns, network, addr); err == nil {
		t.Errorf("%s: %s %s answered %q, want no answer", what, network, addr, got)
	}
}

func readSysctl(t *testing.T, ns netns.NsHandle, key string) string {
	t.Helper()
	var v []byte
	err := inNetNS(ns, func() error {
		var err error
		v, err = os.ReadFile(filepath.Join("/proc/sys/net", key))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}
