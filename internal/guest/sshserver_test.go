package guest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// testServer is an in-process SSH server on 127.0.0.1 standing in for a
// guest's sshd: it runs exec requests for real with bash -c (bash, like a
// login shell, execs a last simple command, so a signal death reaches the
// client as exit-signal), a minimal shell (no real pty: /bin/sh on pipes),
// and the sftp subsystem over the host's file system.
type testServer struct {
	t          testing.TB
	cfg        *ssh.ServerConfig
	ln         net.Listener
	wg         sync.WaitGroup
	mu         sync.Mutex
	conns      map[net.Conn]bool
	running    int      // commands running now
	signalled  []string // signal names of commands that died by a signal
	ptyReqs    []ptyReq
	users      []string
	closedOnce sync.Once
}

type ptyReq struct {
	Term          string
	Cols, Rows    uint32
	Width, Height uint32
	Modes         string
}

func newEd25519Signer(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startTestServer listens on addr ("127.0.0.1:0" for any port) with the
// given host keys, accepting the client key authorized.
func startTestServer(t testing.TB, addr string, authorized ssh.PublicKey, hostKeys ...ssh.Signer) *testServer {
	t.Helper()
	s := &testServer{t: t, conns: map[net.Conn]bool{}}
	s.cfg = &ssh.ServerConfig{
		PublicKeyCallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), authorized.Marshal()) {
				s.mu.Lock()
				s.users = append(s.users, md.User())
				s.mu.Unlock()
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	for _, k := range hostKeys {
		s.cfg.AddHostKey(k)
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // a port just given up may take a moment to be free
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

func (s *testServer) AddrPort() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}

// Close stops the server, drops its connections and waits for all of its
// goroutines and commands.
func (s *testServer) Close() {
	s.closedOnce.Do(func() {
		s.ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

func (s *testServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serveConn(c)
	}
}

func (s *testServer) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	sc, chans, reqs, err := ssh.NewServerConn(c, s.cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ssh.DiscardRequests(reqs)
	}()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		s.wg.Add(1)
		go s.session(ch, creqs)
	}
}

func (s *testServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer s.wg.Done()
	defer ch.Close()
	var proc chan *exec.Cmd // the running command, for signal requests
	var cmd *exec.Cmd
	for req := range reqs {
		switch req.Type {
		case "pty-req":
			var p ptyReq
			if err := ssh.Unmarshal(req.Payload, &p); err != nil {
				req.Reply(false, nil)
				continue
			}
			s.mu.Lock()
			s.ptyReqs = append(s.ptyReqs, p)
			s.mu.Unlock()
			req.Reply(true, nil)
		case "env", "window-change":
			req.Reply(true, nil)
		case "exec", "shell":
			if proc != nil {
				req.Reply(false, nil)
				continue
			}
			var c *exec.Cmd
			if req.Type == "exec" {
				var p struct{ Command string }
				if err := ssh.Unmarshal(req.Payload, &p); err != nil {
					req.Reply(false, nil)
					continue
				}
				c = exec.Command("/bin/bash", "-c", p.Command)
			} else {
				c = exec.Command("/bin/sh")
			}
			proc = make(chan *exec.Cmd, 1)
			req.Reply(true, nil)
			s.wg.Add(1)
			go s.run(ch, c, proc)
		case "subsystem":
			var p struct{ Name string }
			if err := ssh.Unmarshal(req.Payload, &p); err != nil || p.Name != "sftp" || proc != nil {
				req.Reply(false, nil)
				continue
			}
			proc = make(chan *exec.Cmd, 1)
			req.Reply(true, nil)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				srv, err := sftp.NewServer(ch)
				if err == nil {
					srv.Serve()
					srv.Close()
				}
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
				ch.Close()
			}()
		case "signal":
			var p struct{ Signal string }
			ssh.Unmarshal(req.Payload, &p)
			if cmd == nil && proc != nil {
				select {
				case cmd = <-proc:
				case <-time.After(time.Second):
				}
			}
			if cmd != nil && cmd.Process != nil {
				if n, ok := signalNumbers[p.Signal]; ok {
					cmd.Process.Signal(syscall.Signal(n))
				}
			}
			if req.WantReply {
				req.Reply(true, nil)
			}
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}
	// The client went away: end what still runs.
	if cmd == nil && proc != nil {
		select {
		case cmd = <-proc:
		default:
		}
	}
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Kill()
	}
}

var testSignalNames = map[syscall.Signal]string{
	syscall.SIGKILL: "KILL", syscall.SIGTERM: "TERM", syscall.SIGUSR1: "USR1", syscall.SIGINT: "INT",
}

func (s *testServer) run(ch ssh.Channel, c *exec.Cmd, proc chan<- *exec.Cmd) {
	defer s.wg.Done()
	c.Stdout = ch
	c.Stderr = ch.Stderr()
	stdin, err := c.StdinPipe()
	if err == nil {
		err = c.Start()
	}
	if err != nil {
		ch.Stderr().Write([]byte(err.Error() + "\n"))
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{127}))
		ch.Close()
		return
	}
	proc <- c
	s.mu.Lock()
	s.running++
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		io.Copy(stdin, ch)
		stdin.Close()
	}()
	err = c.Wait()
	s.mu.Lock()
	s.running--
	s.mu.Unlock()
	ws, _ := c.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		s.mu.Lock()
		s.signalled = append(s.signalled, testSignalNames[ws.Signal()])
		s.mu.Unlock()
		ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: testSignalNames[ws.Signal()]}))
	} else {
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
	}
	ch.Close()
}

type serverSeen struct {
	users     []string
	signalled []string
	ptyReqs   []ptyReq
}

// snapshot returns what the server has seen so far.
func (s *testServer) snapshot() serverSeen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return serverSeen{
		users:     append([]string(nil), s.users...),
		signalled: append([]string(nil), s.signalled...),
		ptyReqs:   append([]ptyReq(nil), s.ptyReqs...),
	}
}

func (s *testServer) runningCommands() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// checkLeaks fails the test if goroutines started during it are still
// there once its cleanups ran (call it first: cleanups run last-in first).
func checkLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("%d goroutines leaked:\n%s", n-before, buf)
		}
	})
}
