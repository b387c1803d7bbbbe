package server

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
)

// agentHandshakeTimeout bounds the SSH handshake on an upgraded connection.
const agentHandshakeTimeout = 10 * time.Second

// agentHostKey is the daemon's SSH host key on upgraded connections: made
// once per process, never stored. The unix socket is the trust root (the
// client reached the daemon's own socket), so the client does not check it.
type agentHostKey struct {
	once sync.Once
	key  ssh.Signer
	err  error
}

func (k *agentHostKey) get() (ssh.Signer, error) {
	k.once.Do(func() {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			k.err = err
			return
		}
		k.key, k.err = ssh.NewSignerFromKey(priv)
	})
	return k.key, k.err
}

// vmAgent is GET /v1/vms/{ref}/agent. It waits (?wait=) for the VM's guest
// agent, then either answers its status (no Upgrade header: `vm start
// --wait`) or switches the connection to SSH (Upgrade: banger-ssh) and
// serves it in process, forwarding every channel to the agent: `vm exec`,
// `cp` and `ssh` this way need no key and no root. Clients authenticate
// nothing in SSH: the socket's permissions (and the owner checks of VM
// resolution) already decided who may be here.
func (s *server) vmAgent(w http.ResponseWriter, r *http.Request) {
	var wait time.Duration
	if q := r.URL.Query().Get(api.AgentWaitParam); q != "" {
		d, err := time.ParseDuration(q)
		if err != nil || d < 0 {
			writeError(w, errdefs.InvalidArgument("%s=%q is not a duration (hint: e.g. 5m)", api.AgentWaitParam, q))
			return
		}
		wait = d
	}
	upgrade := strings.EqualFold(r.Header.Get("Upgrade"), api.AgentUpgrade)
	if u := r.Header.Get("Upgrade"); u != "" && !upgrade {
		writeError(w, errdefs.InvalidArgument("upgrade to %q: only %q is served", u, api.AgentUpgrade))
		return
	}
	c, v, err := s.svc.Agent(r.Context(), r.PathValue("ref"), wait)
	if err != nil {
		writeError(w, err)
		return
	}
	if !upgrade {
		ver := c.Version()
		writeJSON(w, http.StatusOK, api.AgentStatus{Protocol: ver.Protocol, Build: ver.Build, User: s.svc.GuestUser()})
		return
	}
	key, err := s.hostKey.get()
	if err != nil {
		writeError(w, err)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{}) // the server's header and body limits end here
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + api.AgentUpgrade + "\r\n" +
		api.APIVersionHeader + ": " + api.Version + "\r\n" + api.GuestUserHeader + ": " + s.svc.GuestUser() + "\r\n\r\n")
	if err := brw.Flush(); err != nil {
		return
	}
	log := s.log.With("vm", v.Name, "vm_id", v.ID)
	cfg := &ssh.ServerConfig{NoClientAuth: true, ServerVersion: agent.ServerVersion(agent.ProtocolVersion)}
	cfg.AddHostKey(key)
	_ = conn.SetDeadline(time.Now().Add(agentHandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(&bufferedConn{Conn: conn, r: brw.Reader}, cfg)
	if err != nil {
		log.Debug("agent upgrade: ssh handshake", "error", err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	defer sc.Close()
	// The session ends with the client or the daemon; if the agent's
	// connection ends, its channels end and the client sees them close.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	context.AfterFunc(ctx, func() { sc.Close() })
	go forwardGlobal(reqs, c.Conn())
	if err := agent.ProxyChannels(ctx, chans, c.Conn()); err != nil && ctx.Err() == nil {
		log.Debug("agent upgrade: proxy", "error", err)
	}
}

// forwardGlobal passes the client's version and ready requests to the
// agent (agent.NewClient asks the version); the others (identity, clock,
// shutdown) are the daemon's to send, never a caller's.
func forwardGlobal(reqs <-chan *ssh.Request, to ssh.Conn) {
	for r := range reqs {
		switch r.Type {
		case agent.ReqVersion, agent.ReqReady:
			ok, payload, err := to.SendRequest(r.Type, r.WantReply, r.Payload)
			if err != nil {
				ok = false
			}
			if r.WantReply {
				_ = r.Reply(ok, payload)
			}
		default:
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}
}

// bufferedConn reads first what the HTTP server had buffered.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
