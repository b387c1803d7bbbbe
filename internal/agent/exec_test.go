package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
)

func run(t *testing.T, c *Client, o ExecOptions) (ExitStatus, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	o.Stdout, o.Stderr = &stdout, &stderr
	st, err := c.Exec(testCtx(t), o)
	if err != nil {
		t.Fatal(err)
	}
	return st, stdout.String(), stderr.String()
}

func TestExecExitCodeAndSeparateStreams(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	st, out, errOut := run(t, c, ExecOptions{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if st != (ExitStatus{Code: 3}) || out != "out\n" || errOut != "err\n" {
		t.Fatalf("got %+v stdout %q stderr %q, want code 3, \"out\\n\", \"err\\n\"", st, out, errOut)
	}
	st, _, _ = run(t, c, ExecOptions{Argv: []string{"true"}})
	if st != (ExitStatus{}) {
		t.Fatalf("true: %+v", st)
	}
}

func TestExecRunsArgvWithoutShell(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	arg := "$HOME; touch /nonexistent/x `id` | cat"
	st, out, _ := run(t, c, ExecOptions{Argv: []string{"echo", arg}})
	if st.Code != 0 || out != arg+"\n" {
		t.Fatalf("echo printed %q (%+v), want the argument verbatim: a shell got in between", out, st)
	}
}

func TestExecSignal(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	st, _, _ := run(t, c, ExecOptions{Argv: []string{"sh", "-c", "kill -TERM $$"}})
	if st.Signal != "TERM" || st.Code != 128+int(syscall.SIGTERM) {
		t.Fatalf("got %+v, want signal TERM, code 143", st)
	}
}

func TestExecStdin(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	in := make([]byte, 3<<20)
	if _, err := rand.Read(in); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := c.Exec(testCtx(t), ExecOptions{Argv: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || st.Code != 0 {
		t.Fatal(st, err)
	}
	if sha256.Sum256(out.Bytes()) != sha256.Sum256(in) {
		t.Fatalf("cat returned %d bytes differing from the %d sent", out.Len(), len(in))
	}
}

func TestExecEnvAndDir(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	dir := t.TempDir()
	st, out, _ := run(t, c, ExecOptions{
		Argv: []string{"sh", "-c", `echo "$FOO"; pwd`},
		Env:  map[string]string{"FOO": "bar baz"},
		Dir:  dir,
	})
	if st.Code != 0 || out != "bar baz\n"+dir+"\n" {
		t.Fatalf("got %q (%+v)", out, st)
	}
}

func TestExecAsUser(t *testing.T) {
	testutil.RequireRoot(t)
	c := startAgent(t, newFakeSystem())
	st, out, _ := run(t, c, ExecOptions{Argv: []string{"id", "-u"}, User: "nobody"})
	if st.Code != 0 || strings.TrimSpace(out) != "65534" {
		t.Fatalf("id -u as nobody: %q (%+v)", out, st)
	}
	st, out, _ = run(t, c, ExecOptions{Argv: []string{"id", "-u"}})
	if st.Code != 0 || strings.TrimSpace(out) != "0" {
		t.Fatalf("id -u by default: %q (%+v), want root", out, st)
	}
}

func TestExecErrorsReachTheHost(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	for _, tc := range []struct {
		o    ExecOptions
		want string
	}{
		{ExecOptions{Argv: []string{"true"}, User: "no-such-user-banger"}, `user "no-such-user-banger"`},
		{ExecOptions{Argv: []string{"no-such-command-banger"}}, `"no-such-command-banger": command not found`},
		{ExecOptions{Argv: []string{"true"}, Dir: "/no/such/dir"}, "/no/such/dir"},
	} {
		st, _, errOut := run(t, c, tc.o)
		if st.Code != 127 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%+v: exit %+v stderr %q, want 127 and %q", tc.o, st, errOut, tc.want)
		}
	}
	if _, err := c.Exec(testCtx(t), ExecOptions{}); errdefs.ClassOf(err) != errdefs.ClassInvalidArgument {
		t.Errorf("no argv: %v, want invalid argument", err)
	}
}

// A plain SSH exec (a shell command line, as ssh(1) sends) is refused: the
// agent never runs text through a shell.
func TestExecShellLineRefused(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	s, err := c.SSH().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var stderr bytes.Buffer
	s.Stderr = &stderr
	err = s.Run("touch /tmp/banger-agent-should-not-exist")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 127 || !strings.Contains(stderr.String(), "not banger's JSON") {
		t.Fatalf("err = %v stderr %q, want exit 127 and a JSON hint", err, stderr.String())
	}
}

func TestExecTTY(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	st, out, _ := run(t, c, ExecOptions{
		Argv: []string{"sh", "-c", `stty size; test -t 0 && test -t 1 && echo tty; echo "$TERM"`},
		TTY:  &TTY{Term: "xterm-banger", Size: WindowSize{Cols: 101, Rows: 31}},
	})
	out = strings.ReplaceAll(out, "\r\n", "\n")
	if st.Code != 0 || out != "31 101\ntty\nxterm-banger\n" {
		t.Fatalf("got %q (%+v)", out, st)
	}
}

func TestExecTTYWindowChange(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	pr, pw := io.Pipe()
	resize := make(chan WindowSize, 1)
	done := make(chan error, 1)
	var st ExitStatus
	go func() {
		var err error
		st, err = c.Exec(testCtx(t), ExecOptions{
			Argv:   []string{"sh", "-c", `trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.05; done`},
			TTY:    &TTY{Size: WindowSize{Cols: 80, Rows: 24}, Resize: resize},
			Stdout: pw,
		})
		pw.CloseWithError(err)
		done <- err
	}()
	sc := bufio.NewScanner(pr)
	var lines []string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		lines = append(lines, line)
		if line == "ready" {
			resize <- WindowSize{Cols: 132, Rows: 43}
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st.Code != 0 || len(lines) != 2 || lines[1] != "43 132" {
		t.Fatalf("lines %q (%+v), want ready then the new size 43 132", lines, st)
	}
}

func TestExecShell(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	var out bytes.Buffer
	st, err := c.Exec(testCtx(t), ExecOptions{
		Shell:  true,
		Env:    map[string]string{"GREETING": "hi"},
		Stdin:  strings.NewReader("echo \"$GREETING from $0\"; exit 4\n"),
		Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 4 || !strings.HasPrefix(out.String(), "hi from -") {
		t.Fatalf("shell: %q (%+v), want a login shell greeting and code 4", out.String(), st)
	}
}

// Ending the caller's context kills the guest command.
func TestExecCancelKillsCommand(t *testing.T) {
	c := startAgent(t, newFakeSystem())
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(testCtx(t))
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, ExecOptions{Argv: []string{"sh", "-c", `echo $$ > "$0"; echo started; exec sleep 1000`, pidFile}, Stdout: pw})
		done <- err
	}()
	if line, _ := bufio.NewReader(pr).ReadString('\n'); line != "started\n" {
		t.Fatalf("command printed %q", line)
	}
	go io.Copy(io.Discard, pr)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want canceled", err)
	}
	// The agent kills and reaps it: then signal 0 fails. (Polled; the
	// test's deadline bounds it.)
	for syscall.Kill(pid, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExecRequestJSON(t *testing.T) {
	// The wire form is part of the protocol: field names are fixed.
	b := marshal(ExecRequest{Argv: []string{"a"}, Env: map[string]string{"K": "V"}, Dir: "/d", User: "u"})
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"argv", "env", "dir", "user"} {
		if _, ok := m[k]; !ok {
			t.Errorf("exec JSON %s lacks %q", b, k)
		}
	}
}
