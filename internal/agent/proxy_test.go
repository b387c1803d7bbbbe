package agent

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// cliThroughProxy starts an agent, and an in-process SSH server (as the
// daemon would serve the CLI on an upgraded API connection) whose channels
// ProxyChannels forwards to the agent. It returns a Client speaking to that
// server, as the CLI would.
func cliThroughProxy(t *testing.T) *Client {
	t.Helper()
	agent := startAgent(t, newFakeSystem())
	cliEnd, daemonEnd := socketPair(t)
	srv, err := NewServer(testLogger(t), newFakeSystem(), "daemon")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	proxied := make(chan error, 1)
	go func() {
		cfg := &ssh.ServerConfig{NoClientAuth: true, ServerVersion: "SSH-2.0-bangerd"}
		cfg.AddHostKey(srv.hostKey)
		sc, chans, reqs, err := ssh.NewServerConn(daemonEnd, cfg)
		if err != nil {
			proxied <- err
			return
		}
		defer sc.Close()
		go ssh.DiscardRequests(reqs)
		proxied <- ProxyChannels(ctx, chans, agent.Conn())
	}()
	t.Cleanup(func() {
		cancel()
		<-proxied
	})
	cfg := &ssh.ClientConfig{User: "cli", HostKeyCallback: ssh.InsecureIgnoreHostKey()}
	sc, chans, reqs, err := ssh.NewClientConn(cliEnd, "daemon", cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{logger: testLogger(t), conn: sc, ssh: ssh.NewClient(sc, chans, reqs)}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestProxyExec(t *testing.T) {
	c := cliThroughProxy(t)
	var out, errOut bytes.Buffer
	st, err := c.Exec(testCtx(t), ExecOptions{
		Argv:   []string{"sh", "-c", `cat; echo err >&2; exit 5`},
		Stdin:  strings.NewReader("from the cli\n"),
		Stdout: &out, Stderr: &errOut,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 5 || out.String() != "from the cli\n" || errOut.String() != "err\n" {
		t.Fatalf("got %+v %q %q", st, out.String(), errOut.String())
	}
	st, _, _ = run(t, c, ExecOptions{Argv: []string{"sh", "-c", "kill -KILL $$"}})
	if st.Signal != "KILL" {
		t.Fatalf("signal through the proxy: %+v", st)
	}
}

func TestProxyTTY(t *testing.T) {
	c := cliThroughProxy(t)
	st, out, _ := run(t, c, ExecOptions{
		Argv: []string{"sh", "-c", "stty size; test -t 0 && echo tty"},
		TTY:  &TTY{Size: WindowSize{Cols: 90, Rows: 20}},
	})
	if st.Code != 0 || strings.ReplaceAll(out, "\r\n", "\n") != "20 90\ntty\n" {
		t.Fatalf("got %q %+v", out, st)
	}
}

// Many output bytes arrive whole before the exit status.
func TestProxyOutputBeforeExit(t *testing.T) {
	c := cliThroughProxy(t)
	st, out, _ := run(t, c, ExecOptions{Argv: []string{"sh", "-c", "head -c 2000000 /dev/zero; exit 9"}})
	if st.Code != 9 || len(out) != 2000000 {
		t.Fatalf("got %d bytes, %+v; want 2000000 and code 9", len(out), st)
	}
}

func TestProxyCopy(t *testing.T) {
	c := cliThroughProxy(t)
	src, guestDir, back := t.TempDir(), t.TempDir(), t.TempDir()
	tree(t, src)
	want := snapshot(t, src)
	if err := c.CopyTo(testCtx(t), src, filepath.Join(guestDir, "c")); err != nil {
		t.Fatal(err)
	}
	if err := c.CopyFrom(testCtx(t), filepath.Join(guestDir, "c"), filepath.Join(back, "c")); err != nil {
		t.Fatal(err)
	}
	sameTree(t, "through the proxy", want, snapshot(t, filepath.Join(back, "c")))
}

func TestProxyRejectsWhatTheAgentRejects(t *testing.T) {
	c := cliThroughProxy(t)
	_, _, err := c.SSH().OpenChannel("direct-tcpip", nil)
	var oe *ssh.OpenChannelError
	if !errors.As(err, &oe) || oe.Reason != ssh.UnknownChannelType {
		t.Fatalf("err = %v, want the agent's unknown channel type refusal", err)
	}
}
