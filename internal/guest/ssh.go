package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/term"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
)

// Target is a guest to reach over SSH.
type Target struct {
	Addr netip.AddrPort // the VM's IP and SSH port
	Name string         // the VM's name: its pins are by IP and by name
	User string
}

// Timeouts of Dial, WaitReady and the connection keepalive.
const (
	DialTimeout       = 10 * time.Second // TCP connect plus SSH handshake, when ctx allows more
	keepaliveInterval = 15 * time.Second
	keepaliveMissed   = 3
	waitPollMin       = 100 * time.Millisecond
	waitPollMax       = time.Second
)

// Dial connects to the guest t as t.User with signer, checking its host key
// against the pins in knownHostsPath (see identity.HostKeyCallback; tofu pins a
// first key). The TCP connect and the handshake are bounded by ctx and by
// DialTimeout; cancelling ctx during the handshake aborts it. The client
// sends keepalives and closes itself when the guest stops answering.
func Dial(ctx context.Context, t Target, signer ssh.Signer, knownHostsPath string, tofu bool) (*ssh.Client, error) {
	if !t.Addr.IsValid() || t.User == "" || signer == nil {
		return nil, errdefs.InvalidArgument("ssh to vm %q: need an address, a user and a key", t.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	addr := t.Addr.String()
	cfg := &ssh.ClientConfig{
		User:              t.User,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   identity.HostKeyCallback(knownHostsPath, t.Name, tofu),
		HostKeyAlgorithms: identity.PinnedAlgorithms(knownHostsPath, []string{knownhosts.Normalize(addr), t.Name}),
		ClientVersion:     "SSH-2.0-banger",
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh to vm %q at %s: %w", t.Name, addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		// A backstop: ctx's end closes conn first, so that the error is ctx's.
		_ = conn.SetDeadline(dl.Add(time.Second)) // a fresh TCP conn: cannot fail
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if !stop() && err == nil {
		// ctx ended as the handshake completed, and closed conn.
		c.Close()
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil && !errors.Is(err, identity.ErrHostKeyMismatch) {
			// The deadline or the cancel is the cause, whatever the
			// handshake saw of it (a timeout, a closed connection).
			err = ctx.Err()
		}
		return nil, fmt.Errorf("ssh to vm %q at %s: %w", t.Name, addr, err)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, fmt.Errorf("ssh to vm %q at %s: %w", t.Name, addr, err)
	}
	client := ssh.NewClient(c, chans, reqs)
	go keepalive(client)
	return client, nil
}

// keepalive closes c when the guest leaves keepaliveMissed requests in a
// row unanswered, so a session with a dead guest ends. It returns when c
// is closed.
func keepalive(c *ssh.Client) {
	done := make(chan struct{})
	go func() {
		_ = c.Wait() // the connection ended; why does not matter here
		close(done)
	}()
	tick := time.NewTicker(keepaliveInterval)
	defer tick.Stop()
	missed := 0
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		reply := make(chan error, 1)
		go func() {
			_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		select {
		case <-done:
			return
		case err := <-reply:
			if err != nil {
				c.Close()
				return
			}
			missed = 0
		case <-tick.C:
			if missed++; missed >= keepaliveMissed {
				c.Close()
				return
			}
		}
	}
}

// WaitReady polls the guest until an SSH handshake (host key check and
// login included) succeeds, bounded by ctx. A host key mismatch, or no pin
// without tofu, is final and returned at once. When ctx ends first, the error carries ctx's error
// and the last connection error.
func WaitReady(ctx context.Context, t Target, signer ssh.Signer, knownHostsPath string, tofu bool) error {
	delay := waitPollMin
	var last error
	for attempt := 1; ; attempt++ {
		c, err := Dial(ctx, t, signer, knownHostsPath, tofu)
		if err == nil {
			return c.Close()
		}
		if errors.Is(err, identity.ErrHostKeyMismatch) || errors.Is(err, identity.ErrHostKeyUnknown) || errors.Is(err, errdefs.ErrInvalidArgument) {
			return err
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return errdefs.Unavailable("vm %q: ssh on %s not ready after %d attempts: %w (last error: %v)",
				t.Name, t.Addr, attempt, ctx.Err(), last)
		case <-timer.C:
		}
		delay = min(2*delay, waitPollMax)
	}
}

// Run runs argv on the guest through the login shell of the user, each
// argument arriving intact (see QuoteArgv), with stdin, stdout and stderr
// streamed separately (nil stdin: empty input; nil writers discard; the
// two writers are written from different goroutines, so one writer given
// for both must allow that). It returns the command's exit code, 128+n for
// a command killed by signal n; err is for failures to run the command or
// to learn how it ended. Cancelling ctx sends the command TERM, closes the
// session and returns ctx's error at once (see wait).
func Run(ctx context.Context, c *ssh.Client, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	cmd, err := QuoteArgv(argv)
	if err != nil {
		return -1, err
	}
	s, err := c.NewSession()
	if err != nil {
		return -1, fmt.Errorf("open ssh session: %w", err)
	}
	defer s.Close()
	out, errOut := gate(stdout), gate(stderr)
	defer out.close()
	defer errOut.close()
	s.Stdin, s.Stdout, s.Stderr = stdin, out, errOut
	if err := s.Start(cmd); err != nil {
		return -1, fmt.Errorf("start %q on guest: %w", argv[0], err)
	}
	return wait(ctx, s)
}

// wait waits for the session's command to end, or for ctx to end: then the
// command is sent TERM (sshd delivers it when it runs with privilege
// separation, as it does for non-root users) and the session is closed.
// It does not wait for the guest to acknowledge: sshd holds a session open
// until the command's output is closed, and a command may ignore TERM. The
// session's goroutines end when the guest does or the client is closed;
// the caller's writers are gated and no longer written.
func wait(ctx context.Context, s *ssh.Session) (int, error) {
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	select {
	case err := <-done:
		return exitCode(err)
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGTERM) // best effort: the session is closed next
		s.Close()
		return -1, ctx.Err()
	}
}

// gatedWriter passes writes to w until closed, then drops them, so that a
// session abandoned on cancel cannot write to the caller's writers after
// Run or Shell returned.
type gatedWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func gate(w io.Writer) *gatedWriter {
	if w == nil {
		w = io.Discard
	}
	return &gatedWriter{w: w}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return len(p), nil
	}
	return g.w.Write(p)
}

func (g *gatedWriter) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// Shell opens an interactive login shell on the guest with a pty. When
// stdin is a terminal it is put in raw mode for the session (and
// restored), and its size is sent at start and on every SIGWINCH; without a
// terminal (a pipe, a test) the pty is 80x24. It returns the shell's exit
// code like Run.
func Shell(ctx context.Context, c *ssh.Client, stdin *os.File, stdout, stderr io.Writer) (int, error) {
	s, err := c.NewSession()
	if err != nil {
		return -1, fmt.Errorf("open ssh session: %w", err)
	}
	defer s.Close()
	width, height := 80, 24
	fd := -1
	if stdin != nil && term.IsTerminal(int(stdin.Fd())) {
		fd = int(stdin.Fd())
		if w, h, err := term.GetSize(fd); err == nil {
			width, height = w, h
		}
	}
	termType := os.Getenv("TERM")
	if termType == "" {
		termType = "xterm-256color"
	}
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := s.RequestPty(termType, height, width, modes); err != nil {
		return -1, fmt.Errorf("request pty on guest: %w", err)
	}
	if stdin != nil {
		s.Stdin = stdin
	}
	out, errOut := gate(stdout), gate(stderr)
	defer out.close()
	defer errOut.close()
	s.Stdout, s.Stderr = out, errOut
	if fd >= 0 {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return -1, fmt.Errorf("terminal raw mode: %w", err)
		}
		defer func() { _ = term.Restore(fd, old) }() // best effort: the terminal the shell used
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		done := make(chan struct{})
		defer close(done)
		go func() {
			for {
				select {
				case <-done:
					return
				case <-winch:
					if w, h, err := term.GetSize(fd); err == nil {
						_ = s.WindowChange(h, w) // a lost resize only mis-sizes the screen
					}
				}
			}
		}()
	}
	if err := s.Shell(); err != nil {
		return -1, fmt.Errorf("start shell on guest: %w", err)
	}
	return wait(ctx, s)
}

// exitCode turns the end of a session into the command's exit code.
func exitCode(err error) (int, error) {
	var exit *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		if n, ok := signalNumbers[exit.Signal()]; ok {
			return 128 + n, nil
		}
		return exit.ExitStatus(), nil
	case errors.As(err, &missing):
		return -1, errdefs.Unavailable("the guest closed the session without an exit status (hint: the connection or the guest went away)")
	}
	return -1, fmt.Errorf("ssh session: %w", err)
}

// signalNumbers are Linux's numbers of the signal names SSH reports.
var signalNumbers = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "BUS": 7, "FPE": 8,
	"KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15,
	"STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22,
	"URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29,
	"PWR": 30, "SYS": 31,
}

// plainArg needs no quoting for a POSIX shell. '=' is left out so that a
// first argument like "A=b" stays a command name, not an assignment; '~',
// globs, '%', '{' likewise.
var plainArg = regexp.MustCompile(`^[A-Za-z0-9_@+:,./-]+$`)

// QuoteArgv makes the command line that the guest user's login shell (a
// POSIX shell) parses back into exactly argv: arguments that need it are
// put in single quotes, where nothing is special; a single quote inside
// one ends the quoting, is written backslash-escaped, and the quoting
// resumes. A NUL byte cannot be passed and is an error.
func QuoteArgv(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errdefs.InvalidArgument("no command to run")
	}
	var b strings.Builder
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", errdefs.InvalidArgument("argument %d of the command contains a NUL byte", i)
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		if plainArg.MatchString(a) {
			b.WriteString(a)
			continue
		}
		b.WriteByte('\'')
		b.WriteString(strings.ReplaceAll(a, "'", `'\''`))
		b.WriteByte('\'')
	}
	return b.String(), nil
}
