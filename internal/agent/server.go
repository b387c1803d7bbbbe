package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// handshakeTimeout bounds the SSH handshake on either side: a peer that
// sends nothing, or half a handshake, is dropped.
const handshakeTimeout = 20 * time.Second

// Server is the guest side: it serves the host on one connection at a
// time (ServeConn), looping over a virtio-serial port (ServeDevice) or a
// vsock listener (ServeListener).
type Server struct {
	logger  *slog.Logger
	sys     System
	build   string
	proto   int
	hostKey ssh.Signer

	mu       sync.Mutex
	identity bool // an identity request was applied
}

// ServerOption changes a Server made by NewServer.
type ServerOption func(*Server)

// WithProtocolVersion makes the server claim protocol version v instead of
// ProtocolVersion (tests of version mismatch).
func WithProtocolVersion(v int) ServerOption { return func(s *Server) { s.proto = v } }

// NewServer returns a server whose side effects go through sys and which
// reports build as its build version. Its SSH host key is ephemeral, made
// here: the host does not check it (the channel is the trust root).
func NewServer(logger *slog.Logger, sys System, build string, opts ...ServerOption) (*Server, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate agent host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("agent host key: %w", err)
	}
	s := &Server{logger: logger, sys: sys, build: build, proto: ProtocolVersion, hostKey: signer}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// ServeConn serves one SSH connection on c until the host disconnects, the
// handshake fails, or ctx ends; it closes c. Commands still running when it
// returns are killed.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	return s.serve(ctx, c)
}

// serve serves one SSH connection on c; the connection's end closes c.
func (s *Server) serve(ctx context.Context, c net.Conn) error {
	cfg := &ssh.ServerConfig{NoClientAuth: true, ServerVersion: ServerVersion(s.proto)}
	cfg.AddHostKey(s.hostKey)
	// Deadlines are best effort: a transport without them relies on the
	// host closing its end.
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return fmt.Errorf("agent handshake: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	s.logger.Debug("host connected", "client_version", string(sc.ClientVersion()))

	var wg sync.WaitGroup
	wg.Go(func() {
		for r := range reqs {
			s.global(sc, r)
		}
	})
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, fmt.Sprintf("channel type %q not supported", nc.ChannelType()))
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			s.logger.Warn("accept session", "err", err)
			continue
		}
		wg.Go(func() { s.session(ctx, ch, creqs) })
	}
	cancel() // kills the commands of sessions still running
	wg.Wait()
	return sc.Wait()
}

var (
	hostnameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	machineIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// global answers one global request. Requests are served in order, one at
// a time: SSH replies to global requests in the order they came.
func (s *Server) global(sc *ssh.ServerConn, r *ssh.Request) {
	var (
		reply any
		err   error
		after func()
	)
	switch r.Type {
	case ReqVersion:
		reply = VersionInfo{Protocol: s.proto, Build: s.build}
	case ReqReady:
		s.mu.Lock()
		reply = ReadyInfo{Ready: true, BootID: s.sys.BootID(), Identity: s.identity}
		s.mu.Unlock()
	case ReqIdentity:
		var id Identity
		if err = decode(r.Payload, &id); err == nil {
			reply, err = s.applyIdentity(id)
		}
	case ReqClock:
		var c ClockRequest
		if err = decode(r.Payload, &c); err == nil {
			if c.UnixNano <= 0 {
				err = errors.New("clock: time must be after 1970")
			} else {
				err = s.sys.SetClock(time.Unix(0, c.UnixNano))
			}
		}
		reply = struct{}{}
	case ReqEntropy:
		var e EntropyRequest
		if err = decode(r.Payload, &e); err == nil {
			switch {
			case len(e.Data) == 0:
				err = errors.New("entropy: no bytes given")
			case len(e.Data) > MaxEntropy:
				err = fmt.Errorf("entropy: %d bytes given, at most %d accepted", len(e.Data), MaxEntropy)
			default:
				err = s.sys.AddEntropy(e.Data)
			}
		}
		reply = struct{}{}
	case ReqShutdown:
		var sd ShutdownRequest
		if err = decode(r.Payload, &sd); err == nil {
			// Answer first: the host learns the shutdown is under way,
			// then the connection drops as the guest goes down.
			after = func() {
				if err := s.sys.Shutdown(sd.Reboot); err != nil {
					s.logger.Error("shutdown", "reboot", sd.Reboot, "err", err)
				}
			}
		}
		reply = struct{}{}
	default:
		if r.WantReply {
			_ = r.Reply(false, nil)
		}
		return
	}
	if err != nil {
		s.logger.Warn("request failed", "request", r.Type, "err", err)
		if r.WantReply {
			_ = r.Reply(false, marshal(replyError{Error: err.Error()}))
		}
		return
	}
	if r.WantReply {
		_ = r.Reply(true, marshal(reply))
	}
	if after != nil {
		go after()
	}
}

func decode(payload []byte, v any) error {
	if len(payload) > maxPayload {
		return fmt.Errorf("payload of %d bytes, at most %d accepted", len(payload), maxPayload)
	}
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("bad payload: %w", err)
	}
	return nil
}

// applyIdentity validates id whole, then applies it part by part.
func (s *Server) applyIdentity(id Identity) (IdentityResult, error) {
	var res IdentityResult
	if id.Hostname != "" && !hostnameRE.MatchString(id.Hostname) {
		return res, fmt.Errorf("identity: hostname %q is not a DNS label (lowercase letters, digits, inner dashes, at most 63)", id.Hostname)
	}
	if id.MachineID != "" && !machineIDRE.MatchString(id.MachineID) {
		return res, fmt.Errorf("identity: machine id %q is not 32 lowercase hex digits", id.MachineID)
	}
	if n := id.Network; n != nil {
		if _, err := net.ParseMAC(n.MAC); err != nil {
			return res, fmt.Errorf("identity: interface mac %q: %w", n.MAC, err)
		}
		if n.NewMAC != "" {
			if _, err := net.ParseMAC(n.NewMAC); err != nil {
				return res, fmt.Errorf("identity: new mac %q: %w", n.NewMAC, err)
			}
		}
		if !n.Address.IsValid() {
			return res, errors.New("identity: network without an address")
		}
		if n.Gateway.IsValid() && !n.Address.Masked().Contains(n.Gateway) {
			return res, fmt.Errorf("identity: gateway %s is outside %s", n.Gateway, n.Address.Masked())
		}
	}
	for _, a := range id.DNS {
		if !a.IsValid() {
			return res, errors.New("identity: invalid DNS server")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.identity = false
	// The network (where the guest waits on the kernel and on
	// systemd-networkd) runs beside the other parts, which touch other
	// files; the one flush comes after both. How long each part took is
	// logged once: a restored guest's identity is on the critical path of
	// a warm start.
	began := time.Now()
	var (
		lapsMu sync.Mutex
		laps   []any
	)
	timed := func(what string, f func() error) error {
		t := time.Now()
		err := f()
		lapsMu.Lock()
		laps = append(laps, what+"_ms", time.Since(t).Milliseconds())
		lapsMu.Unlock()
		return err
	}
	defer func() {
		s.logger.Info("identity applied", append(laps, "total_ms", time.Since(began).Milliseconds())...)
	}()
	var netErr error
	var network sync.WaitGroup
	if id.Network != nil {
		network.Go(func() {
			netErr = timed("network", func() error { return s.sys.ConfigureNetwork(*id.Network, id.DNS) })
			if netErr != nil {
				netErr = fmt.Errorf("identity: configure network: %w", netErr)
			}
		})
	}
	err := s.applyFiles(id, &res, timed)
	network.Wait()
	if err := errors.Join(netErr, err); err != nil {
		return res, err
	}
	if err := timed("sync", s.sys.Sync); err != nil {
		return res, fmt.Errorf("identity: %w", err)
	}
	s.identity = true
	return res, nil
}

// applyFiles applies the parts of id other than the network, in order,
// stopping at the first error; host keys' public halves go into res.
func (s *Server) applyFiles(id Identity, res *IdentityResult, timed func(string, func() error) error) error {
	if id.Hostname != "" {
		if err := timed("hostname", func() error { return s.sys.SetHostname(id.Hostname) }); err != nil {
			return fmt.Errorf("identity: set hostname: %w", err)
		}
	}
	if id.MachineID != "" {
		if err := timed("machine_id", func() error { return s.sys.SetMachineID(id.MachineID) }); err != nil {
			return fmt.Errorf("identity: set machine id: %w", err)
		}
	}
	if len(id.DNS) > 0 {
		if err := timed("dns", func() error { return s.sys.SetDNS(id.DNS) }); err != nil {
			return fmt.Errorf("identity: set dns: %w", err)
		}
	}
	if id.NewHostKeys {
		err := timed("host_keys", func() error {
			keys, err := s.sys.NewHostKeys()
			for _, k := range keys {
				res.HostKeys = append(res.HostKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("identity: new ssh host keys: %w", err)
		}
	}
	return nil
}

// serveSFTP serves the sftp subsystem on ch, as the agent's user (root).
func (s *Server) serveSFTP(ch ssh.Channel) uint32 {
	srv, err := sftp.NewServer(ch)
	if err != nil {
		s.logger.Warn("sftp", "err", err)
		return 1
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		s.logger.Debug("sftp ended", "err", err)
	}
	srv.Close()
	return 0
}

// fileConn is a net.Conn over a file: a virtio-serial port or a vsock.
type fileConn struct {
	*os.File
}

type fileAddr string

func (a fileAddr) Network() string { return "file" }
func (a fileAddr) String() string  { return string(a) }

func (f fileConn) LocalAddr() net.Addr  { return fileAddr(f.Name()) }
func (f fileConn) RemoteAddr() net.Addr { return fileAddr(f.Name()) }

var _ net.Conn = fileConn{}
