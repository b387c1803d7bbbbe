package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// groupExitTimeout bounds the wait for a killed process group to vanish.
const groupExitTimeout = 15 * time.Second

// command runs one host command, never through a shell, in its own process
// group: cancelling ctx kills the whole group (mmdebstrap, apt, dpkg and
// what they started), and whatever the outcome no process of the group
// survives the call. Output lines go to onLine (if set); the last lines
// are kept for the error message.
type command struct {
	name   string
	args   []string
	env    []string
	onLine func(string)
	stdout io.Writer // optional: stdout goes here instead of the line handler
}

// commandError is a failed command with the tail of its output.
type commandError struct {
	cmd    string
	err    error
	output string
}

func (e *commandError) Error() string {
	if e.output == "" {
		return fmt.Sprintf("%s: %v", e.cmd, e.err)
	}
	return fmt.Sprintf("%s: %v:\n%s", e.cmd, e.err, e.output)
}

func (e *commandError) Unwrap() error { return e.err }

func (c command) run(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cmd := exec.Command(c.name, c.args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
	cmd.Env = append(cmd.Env, c.env...)
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	tail := &lineTail{onLine: c.onLine, max: 40}
	cmd.Stderr = tail
	cmd.Stdout = tail
	if c.stdout != nil {
		cmd.Stdout = c.stdout
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	pgid := cmd.Process.Pid

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-done
	}
	// The leader is gone; its group may not be (a child that ignored the
	// end of its parent, or the cancellation above). Nothing may outlive us.
	groupErr := killGroup(pgid)
	tail.flush()
	if ctx.Err() != nil {
		return errors.Join(fmt.Errorf("%s: %w", c.name, ctx.Err()), groupErr)
	}
	if err != nil {
		return errors.Join(&commandError{cmd: c.name, err: err, output: tail.String()}, groupErr)
	}
	return groupErr
}

// killGroup kills what is left of process group pgid and waits until the
// group is empty.
func killGroup(pgid int) error {
	deadline := time.Now().Add(groupExitTimeout)
	for {
		err := syscall.Kill(-pgid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of group %d still exist %s after SIGKILL", pgid, groupExitTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lineTail splits output into lines, hands each to onLine and keeps the
// last max lines.
type lineTail struct {
	mu     sync.Mutex
	onLine func(string)
	max    int
	part   []byte
	lines  []string
}

func (t *lineTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part = append(t.part, p...)
	for {
		i := bytes.IndexByte(t.part, '\n')
		if i < 0 {
			break
		}
		t.line(string(t.part[:i]))
		t.part = t.part[i+1:]
	}
	return len(p), nil
}

func (t *lineTail) line(s string) {
	s = strings.TrimRight(s, "\r")
	if t.onLine != nil {
		t.onLine(s)
	}
	t.lines = append(t.lines, s)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *lineTail) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.part) > 0 {
		t.line(string(t.part))
		t.part = nil
	}
}

func (t *lineTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// hasLine reports whether any kept output line contains s.
func (e *commandError) hasLine(s string) bool { return strings.Contains(e.output, s) }

// outputOf runs a command and returns its stdout.
func outputOf(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	err := command{name: name, args: args, stdout: &out}.run(ctx)
	return out.Bytes(), err
}
