package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
)

// The guest agent through the daemon (issue 10): exec, cp and ssh go over
// the daemon's API socket to the VM's banger-agent, so they need no key
// and no root. For a VM whose image has no agent the daemon answers
// NotSupported and the CLI falls back to SSH over the guest's network.

// dialAgent connects to ref's agent through the daemon. ok is false (and
// err nil) when the VM's image has no agent: use SSH.
func dialAgent(ctx context.Context, g *globals, ref string) (c *agent.Client, user string, ok bool, err error) {
	conn, st, err := g.client().DialAgent(ctx, ref, 0)
	if errors.Is(err, errdefs.ErrNotSupported) {
		return nil, "", false, nil
	}
	if err != nil {
		return nil, "", false, err
	}
	c, err = agent.NewClient(ctx, slog.New(slog.DiscardHandler), conn)
	if err != nil {
		return nil, "", false, err
	}
	return c, st.User, true, nil
}

// waitReady waits until ref's guest is ready: its agent answers, or, for
// an image without one, its SSH server accepts banger's key.
func waitReady(ctx context.Context, g *globals, ref string, timeout time.Duration) error {
	_, err := g.client().WaitAgent(ctx, ref, timeout)
	if errors.Is(err, errdefs.ErrNotSupported) {
		return waitSSH(ctx, g, ref, timeout)
	}
	return err
}

// execOptions says how to run a command through the agent.
type execOptions struct {
	argv        []string
	interactive bool // vm ssh: stdin forwarded even from a terminal
	tty         bool // a pseudo-terminal (always for a shell)
	network     bool // SSH over the guest's network, never the agent
}

// runViaAgent runs o on the agent and returns the CLI's error for its end.
func runViaAgent(ctx context.Context, c *agent.Client, user string, o execOptions) error {
	eo := agent.ExecOptions{Argv: o.argv, Shell: len(o.argv) == 0, User: user, Stdout: os.Stdout, Stderr: os.Stderr}
	stdinTTY := term.IsTerminal(int(os.Stdin.Fd()))
	if o.interactive || o.tty || eo.Shell || !stdinTTY {
		eo.Stdin = os.Stdin
	}
	if o.tty || eo.Shell {
		tty := &agent.TTY{Term: os.Getenv("TERM"), Size: agent.WindowSize{Cols: 80, Rows: 24}}
		if stdinTTY {
			fd := int(os.Stdin.Fd())
			if w, h, err := term.GetSize(fd); err == nil {
				tty.Size = agent.WindowSize{Cols: w, Rows: h}
			}
			old, err := term.MakeRaw(fd)
			if err != nil {
				return err
			}
			defer func() { _ = term.Restore(fd, old) }() // best effort: the terminal the shell used
			resize := make(chan agent.WindowSize, 1)
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
							select {
							case resize <- agent.WindowSize{Cols: w, Rows: h}:
							default:
							}
						}
					}
				}
			}()
			tty.Resize = resize
		}
		eo.TTY = tty
	}
	if eo.Stdin == nil {
		eo.Stdin = eofReader{}
	}
	st, err := c.Exec(ctx, eo)
	if err != nil {
		return err
	}
	return guestExit(st.Code)
}

// eofReader is an empty stdin.
type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }
