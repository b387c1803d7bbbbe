package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/errdefs"
)

// A virtio-serial port is one byte stream that outlives host connections,
// and the guest does not reliably see a disconnection: when the host
// closes and reconnects quickly, the guest reads on, and the new host's
// first bytes land in the old SSH connection (which fails on them), while
// bytes the old connection left (the guest's output, a previous host's
// unread handshake) are still in flight. So each host connection starts
// with a sync exchange that both sides find by scanning, discarding what
// came before:
//
//	host:  "BANGER-AGENT-SYNC <nonce>\n"   (repeated every syncInterval)
//	guest: "BANGER-AGENT-READY <nonce>\n"  then SSH
//
// The host repeats its line until the answer comes, since the guest may
// have swallowed it in a dying connection; a repeat that reaches the guest
// after its answer is a line before the host's SSH version, which SSH
// ignores (RFC 4253 4.2). Vsock connections are new streams and need none
// of this.
const (
	syncRequest = "BANGER-AGENT-SYNC "
	syncReply   = "BANGER-AGENT-READY "
	// A restored guest's agent may still be in the connection its
	// snapshot's host had: the first line ends that connection and the
	// next one is answered, so the repeat is kept short.
	syncInterval = 100 * time.Millisecond
	// maxSyncLine bounds the line either side keeps while scanning.
	maxSyncLine = 128
)

// lineScanner reads c a byte at a time (what follows the line it looks for
// is SSH's, not to be buffered) and returns the payload of the next line
// starting with prefix, skipping everything else.
func scanLine(c io.Reader, prefix string) (string, error) {
	var line []byte
	b := make([]byte, 1)
	long := false
	for {
		if _, err := c.Read(b); err != nil {
			return "", err
		}
		if b[0] == '\n' {
			if !long {
				if rest, ok := strings.CutPrefix(string(line), prefix); ok {
					return rest, nil
				}
			}
			line, long = line[:0], false
			continue
		}
		if len(line) >= maxSyncLine {
			long = true // a line too long to be ours: skipped whole
			continue
		}
		line = append(line, b[0])
	}
}

// syncHost is the host's side of the exchange on c, bounded by ctx.
func syncHost(ctx context.Context, c net.Conn) error {
	var nb [12]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return err
	}
	nonce := hex.EncodeToString(nb[:])
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	done := make(chan struct{})
	var writer sync.WaitGroup
	writer.Go(func() {
		t := time.NewTicker(syncInterval)
		defer t.Stop()
		for {
			if _, err := io.WriteString(c, syncRequest+nonce+"\n"); err != nil {
				return
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	var got string
	var err error
	for err == nil && got != nonce {
		got, err = scanLine(c, syncReply)
	}
	// No sync line may follow the host's SSH bytes: the writer is
	// stopped before anything else is written.
	close(done)
	writer.Wait()
	if !stop() || ctx.Err() != nil {
		return errdefs.Unavailable("guest agent: no answer on the serial port: %v (hint: is banger-agent running in the guest?)", context.Cause(ctx))
	}
	if err != nil {
		return errdefs.Unavailable("guest agent: serial port: %v", err)
	}
	_ = c.SetDeadline(time.Time{})
	return nil
}

// syncGuest waits for the next host's sync line on c and answers it.
func syncGuest(c io.ReadWriter) error {
	nonce, err := scanLine(c, syncRequest)
	if err != nil {
		return err
	}
	_, err = io.WriteString(c, syncReply+nonce+"\n")
	return err
}

// serveStream serves host connection after host connection on one
// long-lived stream (a virtio-serial port): sync, SSH until it ends, and
// again. waitHost blocks until a host may be there (a port with no host
// reads EOF at once). It returns when ctx ends or c fails for good.
func (s *Server) serveStream(ctx context.Context, c net.Conn, waitHost func() error) error {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for ctx.Err() == nil {
		if err := waitHost(); err != nil {
			return err
		}
		if err := syncGuest(c); err != nil {
			if errors.Is(err, io.EOF) {
				continue // the host left before syncing
			}
			if ctx.Err() != nil {
				break
			}
			return err
		}
		rc := &reusableConn{Conn: c}
		if err := s.serve(ctx, rc); err != nil {
			s.logger.Info("host connection ended", "err", err)
		}
		// The SSH connection's reader may still be in a read: it is cut
		// off, so that it takes none of the next host's bytes.
		rc.release()
	}
	return ctx.Err()
}

// reusableConn is a stream lent to one SSH connection: closing it ends
// that connection's reads and writes but keeps the stream for the next.
type reusableConn struct {
	net.Conn
	mu     sync.Mutex
	closed bool
	active sync.WaitGroup
}

func (r *reusableConn) Read(p []byte) (int, error) {
	if !r.enter() {
		return 0, net.ErrClosed
	}
	defer r.active.Done()
	return r.Conn.Read(p)
}

func (r *reusableConn) Write(p []byte) (int, error) {
	if !r.enter() {
		return 0, net.ErrClosed
	}
	defer r.active.Done()
	return r.Conn.Write(p)
}

func (r *reusableConn) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.active.Add(1)
	return true
}

func (r *reusableConn) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		_ = r.Conn.SetDeadline(time.Unix(1, 0))
	}
	return nil
}

// release closes r, waits for reads and writes under way to return, and
// clears the stream's deadline for its next user.
func (r *reusableConn) release() {
	r.Close()
	r.active.Wait()
	_ = r.Conn.SetDeadline(time.Time{})
}

// SetDeadline and friends are the stream's, unless r is closed (the
// deadline then stays in the past).
func (r *reusableConn) SetDeadline(t time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	return r.Conn.SetDeadline(t)
}
