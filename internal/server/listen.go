package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
)

// Listen binds the control socket at path, readable and writable by its
// owner (root) and gid only; gid < 0 keeps root's group. A socket left by
// a dead daemon is replaced; one that answers is a live daemon: an error.
func Listen(path string, gid int) (net.Listener, error) {
	if err := layout.CheckSocketPath(path); err != nil {
		return nil, errdefs.InvalidArgument("%w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, errdefs.Conflict("a banger daemon is already serving %s (hint: use another --runtime-dir for a second daemon)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// Bind with a umask that leaves no window in which others could connect,
	// then set the mode explicitly: it never depends on the umask.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if gid < 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			return nil, err
		}
		if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
			l.Close()
			return nil, err
		}
	}
	if gid >= 0 {
		if err := os.Chown(path, 0, gid); err != nil {
			l.Close()
			return nil, err
		}
		if err := os.Chmod(path, 0o660); err != nil {
			l.Close()
			return nil, err
		}
		// Group members must also be able to reach the socket's directory.
		if err := os.Chmod(filepath.Dir(path), 0o710); err != nil {
			l.Close()
			return nil, err
		}
		if err := os.Chown(filepath.Dir(path), 0, gid); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// Limits bound what a client can hold of the daemon before its request
// reaches a handler.
type Limits struct {
	Header      time.Duration // to send the request line and headers
	Body        time.Duration // to send the body, once the headers are in
	Idle        time.Duration // a kept-alive connection between requests
	MaxHalfOpen int           // connections still sending their first request; beyond, the oldest is closed
}

// DefaultLimits are the daemon's.
var DefaultLimits = Limits{Header: 10 * time.Second, Body: 10 * time.Second, Idle: 2 * time.Minute, MaxHalfOpen: 256}

// NewHTTPServer serves h with the limits lim. Requests run on ctx (a
// daemon's SIGTERM cancels them); log gets the server's own errors.
func NewHTTPServer(ctx context.Context, h http.Handler, log *slog.Logger, lim Limits) *http.Server {
	ho := &halfOpen{max: lim.MaxHalfOpen, conns: map[net.Conn]uint64{}, log: log}
	return &http.Server{
		Handler:           WithBodyTimeout(h, lim.Body),
		ReadHeaderTimeout: lim.Header,
		IdleTimeout:       lim.Idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       ConnContext,
		ConnState:         ho.track,
	}
}

// halfOpen keeps at most max connections that have not yet sent a whole
// request: beyond that the oldest is closed. A slow client cannot exhaust
// the daemon's file descriptors, and a client that sends its request at
// once is still served while one holds many half-open connections (each
// is also closed by the header timeout).
type halfOpen struct {
	mu    sync.Mutex
	max   int
	seq   uint64
	conns map[net.Conn]uint64 // connection to its arrival order
	log   *slog.Logger
	cut   uint64 // closed for being the oldest, since the last warning
}

func (h *halfOpen) track(c net.Conn, st http.ConnState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if st != http.StateNew {
		delete(h.conns, c)
		return
	}
	if h.max > 0 && len(h.conns) >= h.max {
		var oldest net.Conn
		var first uint64
		for oc, n := range h.conns {
			if oldest == nil || n < first {
				oldest, first = oc, n
			}
		}
		delete(h.conns, oldest)
		oldest.Close()
		if h.cut++; h.cut == 1 || h.cut%1000 == 0 {
			h.log.Warn("closing the oldest half-open connections: too many clients are slow to send their requests", "max", h.max, "closed", h.cut)
		}
	}
	h.seq++
	h.conns[c] = h.seq
}
