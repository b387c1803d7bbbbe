package agent

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/errdefs"
)

// fakeFirecracker listens on a unix socket as Firecracker's hybrid vsock
// does (docs/vsock.md): a host connection sends "CONNECT <port>\n"; answer
// is called with the port and returns Firecracker's reply line ("" closes
// the connection, as Firecracker does for a port nobody listens on); after
// an OK, the stream is the guest's: the agent serves it.
func fakeFirecracker(t *testing.T, answer func(port string) string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	srv, err := NewServer(testLogger(t), newFakeSystem(), "fc")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				// Firecracker reads the line; a bufio.Reader would eat the
				// client's first SSH bytes, so read byte by byte.
				var line []byte
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						c.Close()
						return
					}
					if b[0] == '\n' {
						break
					}
					line = append(line, b[0])
				}
				port, ok := strings.CutPrefix(string(line), "CONNECT ")
				reply := ""
				if ok {
					reply = answer(port)
				}
				if reply == "" {
					c.Close()
					return
				}
				if _, err := c.Write([]byte(reply)); err != nil || !strings.HasPrefix(reply, "OK ") {
					c.Close()
					return
				}
				_ = srv.ServeConn(ctx, c)
			}()
		}
	}()
	return sock
}

func TestDialVsock(t *testing.T) {
	sock := fakeFirecracker(t, func(port string) string {
		if port != "1024" {
			return ""
		}
		return "OK 1073741824\n"
	})
	c, err := DialVsock(testCtx(t), testLogger(t), sock, VsockPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version().Build != "fc" {
		t.Fatalf("version %+v", c.Version())
	}
	st, out, _ := run(t, c, ExecOptions{Argv: []string{"echo", "through vsock"}})
	if st.Code != 0 || out != "through vsock\n" {
		t.Fatalf("exec: %q %+v", out, st)
	}

	// Nobody on that port: Firecracker closes the connection.
	if _, err := DialVsock(testCtx(t), testLogger(t), sock, 5); errdefs.ClassOf(err) != errdefs.ClassUnavailable {
		t.Fatalf("closed port: err = %v, want unavailable", err)
	}
}

func TestDialVsockBadAnswers(t *testing.T) {
	for name, reply := range map[string]string{
		"not ok":    "FAILURE\n",
		"no port":   "OK \n",
		"unbounded": strings.Repeat("O", 1<<20),
	} {
		t.Run(name, func(t *testing.T) {
			sock := fakeFirecracker(t, func(string) string { return reply })
			_, err := DialVsock(testCtx(t), testLogger(t), sock, VsockPort)
			if errdefs.ClassOf(err) != errdefs.ClassUnavailable {
				t.Fatalf("err = %v, want unavailable", err)
			}
		})
	}
	if _, err := DialVsock(testCtx(t), testLogger(t), filepath.Join(t.TempDir(), "none.sock"), VsockPort); errdefs.ClassOf(err) != errdefs.ClassUnavailable {
		t.Fatalf("no socket: err = %v", err)
	}
}
