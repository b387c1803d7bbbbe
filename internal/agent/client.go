package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/guest"
)

// Client is the host's connection to one guest's agent. Its methods may be
// called concurrently; global requests (Ready, SetIdentity...) are sent one
// at a time. A request that times out closes the connection (SSH has no
// way to abandon one request): the caller dials again.
type Client struct {
	logger  *slog.Logger
	conn    ssh.Conn
	ssh     *ssh.Client
	version VersionInfo
}

// NewClient runs the SSH handshake on c, a channel to the agent, checks the
// agent's protocol version and returns the client. It takes c over (closes
// it on error). The handshake, and each step of it, is bounded by ctx and
// by handshakeTimeout: a guest that sends garbage or nothing gives an
// error, never a hang.
func NewClient(ctx context.Context, logger *slog.Logger, c net.Conn) (*Client, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	cfg := &ssh.ClientConfig{
		User: "root",
		// The channel is the trust root: it exists only between this
		// host and this guest, so the agent's (ephemeral) host key
		// proves nothing more and is not checked.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		ClientVersion:   clientVersion,
	}
	sc, chans, reqs, err := ssh.NewClientConn(c, "banger-agent", cfg)
	if !stop() || ctx.Err() != nil {
		if sc != nil {
			sc.Close()
		}
		c.Close()
		return nil, errdefs.Unavailable("guest agent handshake: %v (hint: is banger-agent running in the guest?)", context.Cause(ctx))
	}
	if err != nil {
		c.Close()
		return nil, errdefs.Unavailable("guest agent handshake: %v", err)
	}
	_ = c.SetDeadline(time.Time{})
	cl := &Client{logger: logger, conn: sc, ssh: ssh.NewClient(sc, chans, reqs)}
	if err := cl.checkVersion(ctx, string(sc.ServerVersion())); err != nil {
		cl.Close()
		return nil, err
	}
	logger.Debug("guest agent connected", "protocol", cl.version.Protocol, "build", cl.version.Build)
	return cl, nil
}

// VersionError is the error for an agent that speaks another protocol
// version (class FailedPrecondition).
type VersionError struct {
	Agent int // the agent's protocol version
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("guest agent speaks protocol %d, this banger speaks %d (hint: rebuild the image with this banger, or use a banger of the image's version)", e.Agent, ProtocolVersion)
}

func versionMismatch(theirs int) error {
	return errdefs.WithClass(errdefs.ClassFailedPrecondition, &VersionError{Agent: theirs})
}

// checkVersion checks the agent's identification string, then asks its
// version (the request also proves the agent answers).
func (c *Client) checkVersion(ctx context.Context, serverVersion string) error {
	v, ok := parseServerVersion(serverVersion)
	if !ok {
		return errdefs.FailedPrecondition("the guest's channel answers as %q, not banger-agent", serverVersion)
	}
	if v != ProtocolVersion {
		return versionMismatch(v)
	}
	if err := c.request(ctx, ReqVersion, nil, &c.version); err != nil {
		return err
	}
	if c.version.Protocol != ProtocolVersion {
		return versionMismatch(c.version.Protocol)
	}
	return nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.ssh.Close() }

// Wait returns when the connection ends (the guest went away, or Close).
func (c *Client) Wait() error { return c.conn.Wait() }

// Conn is the SSH connection to the agent, for ProxyChannels.
func (c *Client) Conn() ssh.Conn { return c.conn }

// Version is the agent's version, as it answered on connect.
func (c *Client) Version() VersionInfo { return c.version }

// request sends a global request with payload in, and decodes the reply
// into out. It is bounded by ctx (or defaultTimeout when ctx has none):
// past it, the connection is closed.
func (c *Client) request(ctx context.Context, name string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	var payload []byte
	if in != nil {
		payload = marshal(in)
	}
	type result struct {
		ok   bool
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		ok, data, err := c.conn.SendRequest(name, true, payload)
		done <- result{ok, data, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		c.conn.Close()
		return errdefs.Unavailable("guest agent: %s: no answer: %v (connection closed)", name, ctx.Err())
	}
	if r.err != nil {
		return errdefs.Unavailable("guest agent: %s: %v", name, r.err)
	}
	if len(r.data) > maxPayload {
		return fmt.Errorf("guest agent: %s: reply of %d bytes, at most %d accepted", name, len(r.data), maxPayload)
	}
	if !r.ok {
		var e replyError
		if len(r.data) == 0 || json.Unmarshal(r.data, &e) != nil || e.Error == "" {
			return errdefs.NotSupported("guest agent: %s: request refused", name)
		}
		return errdefs.FailedPrecondition("guest agent: %s", e.Error)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(r.data, out); err != nil {
		return fmt.Errorf("guest agent: %s: bad reply: %w", name, err)
	}
	return nil
}

// Ready asks the agent whether the guest is ready.
func (c *Client) Ready(ctx context.Context) (ReadyInfo, error) {
	var info ReadyInfo
	err := c.request(ctx, ReqReady, nil, &info)
	return info, err
}

// WaitReady dials with dial until an agent answers ready or ctx ends, each
// attempt bounded by attemptTimeout. It returns the connected client.
func WaitReady(ctx context.Context, dial func(context.Context) (*Client, error), attemptTimeout time.Duration) (*Client, ReadyInfo, error) {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		c, err := dial(actx)
		if err == nil {
			var info ReadyInfo
			info, err = c.Ready(actx)
			if err == nil && info.Ready {
				cancel()
				return c, info, nil
			}
			c.Close()
			if err == nil {
				err = errors.New("agent not ready yet")
			}
		}
		cancel()
		// A version mismatch will not mend by waiting.
		if _, ok := errors.AsType[*VersionError](err); ok {
			return nil, ReadyInfo{}, err
		}
		last = err
		t := time.NewTimer(retryDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ReadyInfo{}, errdefs.Unavailable("guest agent not ready: %v (last attempt: %v)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// SetIdentity applies id in the guest and returns the new SSH host keys
// (when id.NewHostKeys), for the host to pin.
func (c *Client) SetIdentity(ctx context.Context, id Identity) ([]ssh.PublicKey, error) {
	var res IdentityResult
	if err := c.request(ctx, ReqIdentity, id, &res); err != nil {
		return nil, err
	}
	keys := make([]ssh.PublicKey, 0, len(res.HostKeys))
	for _, line := range res.HostKeys {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("guest agent: identity: bad host key %q: %w", line, err)
		}
		keys = append(keys, k)
	}
	if id.NewHostKeys && len(keys) == 0 {
		return nil, errors.New("guest agent: identity: no host keys returned")
	}
	return keys, nil
}

// SetClock sets the guest's wall clock to t.
func (c *Client) SetClock(ctx context.Context, t time.Time) error {
	return c.request(ctx, ReqClock, ClockRequest{UnixNano: t.UnixNano()}, nil)
}

// AddEntropy adds data (at most MaxEntropy bytes) to the guest's random
// pool, credited.
func (c *Client) AddEntropy(ctx context.Context, data []byte) error {
	if len(data) > MaxEntropy {
		return errdefs.InvalidArgument("entropy: %d bytes, at most %d per request", len(data), MaxEntropy)
	}
	return c.request(ctx, ReqEntropy, EntropyRequest{Data: data}, nil)
}

// Shutdown asks the guest to power off (or reboot) cleanly. It returns once
// the agent has accepted; the connection then drops as the guest goes down.
func (c *Client) Shutdown(ctx context.Context, reboot bool) error {
	return c.request(ctx, ReqShutdown, ShutdownRequest{Reboot: reboot}, nil)
}

// CopyTo copies a local file or directory into the guest, as
// guest.CopyTo does over SSH (modes, times and symlinks kept), through the
// agent's sftp server.
func (c *Client) CopyTo(ctx context.Context, localPath, remotePath string) error {
	return guest.CopyTo(ctx, c.ssh, localPath, remotePath)
}

// CopyFrom copies a guest file or directory to the host, as guest.CopyFrom
// does (setuid and setgid bits dropped).
func (c *Client) CopyFrom(ctx context.Context, remotePath, localPath string) error {
	return guest.CopyFrom(ctx, c.ssh, remotePath, localPath)
}

// SSH is the connection as an *ssh.Client (sessions, sftp).
func (c *Client) SSH() *ssh.Client { return c.ssh }
