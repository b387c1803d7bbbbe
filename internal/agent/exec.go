package agent

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
)

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	Cols, Rows int
}

// TTY asks for a pseudo-terminal in the guest.
type TTY struct {
	Term string // TERM, e.g. "xterm-256color"
	Size WindowSize
	// Resize, if set, carries the terminal's later sizes.
	Resize <-chan WindowSize
}

// ExecOptions is one command to run in the guest.
type ExecOptions struct {
	// Argv is run directly (no shell). Empty with Shell.
	Argv []string
	// Shell runs the user's interactive login shell instead of Argv.
	Shell bool
	Env   map[string]string
	Dir   string
	User  string // default root

	Stdin          io.Reader
	Stdout, Stderr io.Writer // with TTY, Stderr is unused: the TTY merges them
	TTY            *TTY
}

// ExitStatus is how a guest command ended: its exit code, or the signal
// that killed it (SSH's name, without "SIG": "KILL", "TERM").
type ExitStatus struct {
	Code   int
	Signal string
}

// Exec runs a command in the guest and returns how it ended once its
// output is all written. Ending ctx kills the command (and ends the
// session).
func (c *Client) Exec(ctx context.Context, o ExecOptions) (ExitStatus, error) {
	if !o.Shell && len(o.Argv) == 0 {
		return ExitStatus{}, errdefs.InvalidArgument("exec: no command given")
	}
	if o.Shell && len(o.Argv) > 0 {
		return ExitStatus{}, errdefs.InvalidArgument("exec: a shell takes no command")
	}
	s, err := c.ssh.NewSession()
	if err != nil {
		return ExitStatus{}, errdefs.Unavailable("guest agent: open session: %v", err)
	}
	defer s.Close()
	s.Stdin, s.Stdout, s.Stderr = o.Stdin, o.Stdout, o.Stderr
	if s.Stdout == nil {
		s.Stdout = io.Discard
	}
	if s.Stderr == nil {
		s.Stderr = io.Discard
	}
	if o.TTY != nil {
		term := o.TTY.Term
		if term == "" {
			term = "xterm"
		}
		if err := s.RequestPty(term, o.TTY.Size.Rows, o.TTY.Size.Cols, ssh.TerminalModes{}); err != nil {
			return ExitStatus{}, fmt.Errorf("guest agent: request a tty: %w", err)
		}
	}
	if o.Shell {
		for k, v := range o.Env {
			if err := s.Setenv(k, v); err != nil {
				return ExitStatus{}, fmt.Errorf("guest agent: env %q: %w", k, err)
			}
		}
		if o.User != "" {
			if err := s.Setenv(EnvUser, o.User); err != nil {
				return ExitStatus{}, fmt.Errorf("guest agent: user: %w", err)
			}
		}
		err = s.Shell()
	} else {
		err = s.Start(string(marshal(ExecRequest{Argv: o.Argv, Env: o.Env, Dir: o.Dir, User: o.User})))
	}
	if err != nil {
		return ExitStatus{}, fmt.Errorf("guest agent: start command: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Wait() }()
	if o.TTY != nil && o.TTY.Resize != nil {
		go func() {
			for {
				select {
				case ws, ok := <-o.TTY.Resize:
					if !ok {
						return
					}
					_ = s.WindowChange(ws.Rows, ws.Cols)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		return ExitStatus{}, fmt.Errorf("guest agent: command: %w", ctx.Err())
	}
	if err == nil {
		return ExitStatus{}, nil
	}
	if ee, ok := errors.AsType[*ssh.ExitError](err); ok {
		if ee.Signal() != "" {
			return ExitStatus{Code: 128 + signalNumber(ee.Signal()), Signal: ee.Signal()}, nil
		}
		return ExitStatus{Code: ee.ExitStatus()}, nil
	}
	return ExitStatus{}, errdefs.Unavailable("guest agent: command: %v (no exit status: the connection to the guest broke)", err)
}
