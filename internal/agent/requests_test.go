package agent

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
)

func TestVersionAndReady(t *testing.T) {
	sys := newFakeSystem()
	c := startAgent(t, sys)
	if v := c.Version(); v.Protocol != ProtocolVersion || v.Build != "test-build" {
		t.Fatalf("version = %+v, want protocol %d build test-build", v, ProtocolVersion)
	}
	info, err := c.Ready(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !info.Ready || info.BootID != "boot-1" || info.Identity {
		t.Fatalf("ready = %+v, want ready, boot-1, no identity yet", info)
	}
	if _, err := c.SetIdentity(testCtx(t), Identity{Hostname: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if info, err = c.Ready(testCtx(t)); err != nil || !info.Identity {
		t.Fatalf("after identity: ready = %+v, %v; want identity applied", info, err)
	}
}

func TestSetIdentity(t *testing.T) {
	sys := newFakeSystem()
	c := startAgent(t, sys)
	id := Identity{
		Hostname:  "fork-2",
		MachineID: strings.Repeat("ab", 16),
		Network: &NetworkIdentity{
			MAC:     "52:54:00:12:34:56",
			Address: netip.MustParsePrefix("172.30.0.7/24"),
			Gateway: netip.MustParseAddr("172.30.0.1"),
		},
		DNS:         []netip.Addr{netip.MustParseAddr("172.30.0.1")},
		NewHostKeys: true,
	}
	keys, err := c.SetIdentity(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	sys.mu.Lock()
	defer sys.mu.Unlock()
	if sys.hostname != "fork-2" || sys.machineID != id.MachineID {
		t.Errorf("hostname %q machine id %q, want fork-2 and %s", sys.hostname, sys.machineID, id.MachineID)
	}
	if sys.network == nil || *sys.network != *id.Network || len(sys.netDNS) != 1 || len(sys.dns) != 1 {
		t.Errorf("network %+v dns %v %v, want %+v", sys.network, sys.netDNS, sys.dns, id.Network)
	}
	if len(keys) != 1 || len(sys.keys) != 1 || !bytes.Equal(keys[0].Marshal(), sys.keys[0].Marshal()) {
		t.Errorf("host keys returned %v, generated %v: the host must get exactly the keys the guest made", keys, sys.keys)
	}
	if sys.synced != 1 {
		t.Errorf("the identity's files were synced %d times, want once (files are written unflushed)", sys.synced)
	}
}

// TestManagedByNetworkd reads networkd's link state as the agent waits on it.
func TestManagedByNetworkd(t *testing.T) {
	for state, want := range map[string]bool{
		"# private\nADMIN_STATE=configured\nOPER_STATE=routable\n": true,
		"ADMIN_STATE=configuring\n":                                true,
		"ADMIN_STATE=unmanaged\nOPER_STATE=routable\n":             false,
		"ADMIN_STATE=linger\n":                                     false,
		"":                                                         false,
	} {
		if got := ManagedByNetworkd([]byte(state)); got != want {
			t.Errorf("%q: managed %v, want %v", state, got, want)
		}
	}
}

// TestNoReexec: only an sshd run with -r keeps the host keys it read at
// start; the default re-executes per connection.
func TestNoReexec(t *testing.T) {
	for args, want := range map[string]bool{
		"/usr/sbin/sshd\x00-D\x00":                                    false,
		"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\x00": false,
		"/usr/sbin/sshd\x00-D\x00-r\x00":                              true,
		"/usr/sbin/sshd\x00-Dr\x00":                                   true,
		"/usr/sbin/sshd\x00-f\x00/etc/ssh/r\x00":                      false,
	} {
		if got := noReexecCmdline([]byte(args)); got != want {
			t.Errorf("%q: no re-exec %v, want %v", args, got, want)
		}
	}
}

func TestSetIdentityRejectsBadInputWhole(t *testing.T) {
	for name, id := range map[string]Identity{
		"hostname":   {Hostname: "Bad_Name", MachineID: strings.Repeat("ab", 16)},
		"machine id": {Hostname: "ok", MachineID: "xyz"},
		"mac":        {Hostname: "ok", Network: &NetworkIdentity{MAC: "nope", Address: netip.MustParsePrefix("10.0.0.2/24")}},
		"no address": {Hostname: "ok", Network: &NetworkIdentity{MAC: "52:54:00:12:34:56"}},
		"gateway":    {Hostname: "ok", Network: &NetworkIdentity{MAC: "52:54:00:12:34:56", Address: netip.MustParsePrefix("10.0.0.2/24"), Gateway: netip.MustParseAddr("10.1.0.1")}},
	} {
		t.Run(name, func(t *testing.T) {
			sys := newFakeSystem()
			c := startAgent(t, sys)
			_, err := c.SetIdentity(testCtx(t), id)
			if err == nil || errdefs.ClassOf(err) != errdefs.ClassFailedPrecondition || !strings.Contains(err.Error(), "identity:") {
				t.Fatalf("err = %v, want a failed-precondition identity error", err)
			}
			sys.mu.Lock()
			defer sys.mu.Unlock()
			if sys.hostname != "" || sys.machineID != "" || sys.network != nil {
				t.Fatalf("a rejected identity changed the guest: %+v", sys)
			}
			// The connection still serves.
			if _, err := c.Ready(testCtx(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestClockEntropyShutdown(t *testing.T) {
	sys := newFakeSystem()
	c := startAgent(t, sys)
	when := time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)
	if err := c.SetClock(testCtx(t), when); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xa5, 0x5a}, 256)
	if err := c.AddEntropy(testCtx(t), data); err != nil {
		t.Fatal(err)
	}
	sys.mu.Lock()
	if !sys.clock.Equal(when) || !bytes.Equal(sys.entropy, data) {
		t.Errorf("clock %v entropy %d bytes, want %v and %d bytes", sys.clock, len(sys.entropy), when, len(data))
	}
	sys.mu.Unlock()

	if err := c.AddEntropy(testCtx(t), make([]byte, MaxEntropy+1)); errdefs.ClassOf(err) != errdefs.ClassInvalidArgument {
		t.Errorf("too much entropy: err = %v, want invalid argument", err)
	}
	// The agent enforces the bound too, for a client that does not.
	ok, reply, err := c.Conn().SendRequest(ReqEntropy, true, marshal(EntropyRequest{Data: make([]byte, MaxEntropy+1)}))
	if err != nil || ok || !strings.Contains(string(reply), "at most") {
		t.Errorf("agent accepted %d bytes of entropy: ok=%v reply=%s err=%v", MaxEntropy+1, ok, reply, err)
	}
	if err := c.SetClock(testCtx(t), time.Unix(0, 0)); err == nil {
		t.Error("clock set to 1970: want an error")
	}

	if err := c.Shutdown(testCtx(t), true); err != nil {
		t.Fatal(err)
	}
	if reboot := <-sys.shutdown; !reboot {
		t.Error("shutdown asked a reboot, got a poweroff")
	}
}

func TestUnknownRequestRefused(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	err := c.request(testCtx(t), "nope@banger", nil, nil)
	if errdefs.ClassOf(err) != errdefs.ClassNotSupported {
		t.Fatalf("err = %v, want not supported", err)
	}
}

func TestVersionMismatch(t *testing.T) {
	_, err := dialAgent(t, newFakeSystem(), WithProtocolVersion(2))
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Agent != 2 || errdefs.ClassOf(err) != errdefs.ClassFailedPrecondition {
		t.Fatalf("err = %v, want a version error for protocol 2", err)
	}
	want := "guest agent speaks protocol 2, this banger speaks 1 (hint: rebuild the image"
	if !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("err = %q, want it to start with %q", err, want)
	}
}

// An SSH server that is not banger's agent is refused by name.
func TestNotAnAgent(t *testing.T) {
	host, g := socketPair(t)
	go fakeSSHServer(t, g, "SSH-2.0-OpenSSH_9.2", nil)
	_, err := NewClient(testCtx(t), testLogger(t), host)
	if err == nil || !strings.Contains(err.Error(), `"SSH-2.0-OpenSSH_9.2", not banger-agent`) {
		t.Fatalf("err = %v, want a not-banger-agent error", err)
	}
}

// fakeSSHServer serves an SSH handshake as version on c, and hands each
// global request to onRequest (nil: never answered).
func fakeSSHServer(t *testing.T, c net.Conn, version string, onRequest func(*ssh.Request)) {
	srv, err := NewServer(testLogger(t), newFakeSystem(), "x")
	if err != nil {
		t.Error(err)
		return
	}
	cfg := &ssh.ServerConfig{NoClientAuth: true, ServerVersion: version}
	cfg.AddHostKey(srv.hostKey)
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go func() {
		for nc := range chans {
			_ = nc.Reject(ssh.Prohibited, "no")
		}
	}()
	for r := range reqs {
		if onRequest != nil {
			onRequest(r)
		}
	}
}
