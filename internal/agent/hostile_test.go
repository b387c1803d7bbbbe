package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
)

// A hostile or broken guest end must give the host an error, bounded in
// time, never a hang or a crash. The bounds are the tests' contexts; each
// test fails by its own deadline (go test -timeout) if a bound is missing.

func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

func TestHostileGarbageFlood(t *testing.T) {
	host, g := socketPair(t)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			_, _ = rand.Read(buf)
			if _, err := g.Write(buf); err != nil {
				return
			}
		}
	}()
	_, err := NewClient(testCtx(t), testLogger(t), host)
	if errdefs.ClassOf(err) != errdefs.ClassUnavailable {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

func TestHostileLongVersionLine(t *testing.T) {
	host, g := socketPair(t)
	go func() {
		line := []byte("SSH-2.0-" + strings.Repeat("x", 1<<16))
		for {
			if _, err := g.Write(line); err != nil {
				return
			}
		}
	}()
	if _, err := NewClient(testCtx(t), testLogger(t), host); err == nil {
		t.Fatal("an endless version line was accepted")
	}
}

func TestHostileSilentGuest(t *testing.T) {
	host, g := socketPair(t)
	go io.Copy(io.Discard, g) // reads everything, says nothing
	_, err := NewClient(shortCtx(t), testLogger(t), host)
	if errdefs.ClassOf(err) != errdefs.ClassUnavailable || !strings.Contains(err.Error(), "handshake") {
		t.Fatalf("err = %v, want an unavailable handshake error", err)
	}
}

func TestHostileHalfHandshake(t *testing.T) {
	host, g := socketPair(t)
	go func() {
		_, _ = g.Write([]byte(ServerVersion(ProtocolVersion) + "\r\n"))
		_, _ = io.Copy(io.Discard, g)
	}()
	if _, err := NewClient(shortCtx(t), testLogger(t), host); errdefs.ClassOf(err) != errdefs.ClassUnavailable {
		t.Fatalf("err = %v, want unavailable", err)
	}
}

// An agent that answers the handshake and its version, then never answers
// a request: the request fails at its deadline and closes the connection;
// another VM's agent is served meanwhile.
func TestHostileRequestNeverAnswered(t *testing.T) {
	host, g := socketPair(t)
	go fakeSSHServer(t, g, ServerVersion(ProtocolVersion), func(r *ssh.Request) {
		if r.Type == ReqVersion {
			_ = r.Reply(true, marshal(VersionInfo{Protocol: ProtocolVersion}))
		}
	})
	bad, err := NewClient(testCtx(t), testLogger(t), host)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	good := startAgent(t, newFakeSystem())

	done := make(chan error, 1)
	go func() {
		_, err := bad.Ready(shortCtx(t))
		done <- err
	}()
	if _, err := good.Ready(testCtx(t)); err != nil {
		t.Fatalf("another agent's request failed while one hangs: %v", err)
	}
	err = <-done
	if errdefs.ClassOf(err) != errdefs.ClassUnavailable || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("err = %v, want unavailable, no answer", err)
	}
	// The timed-out request closed the connection: Wait returns.
	_ = bad.Wait()
}

func TestHostileOversizedReply(t *testing.T) {
	host, g := socketPair(t)
	go fakeSSHServer(t, g, ServerVersion(ProtocolVersion), func(r *ssh.Request) {
		switch r.Type {
		case ReqVersion:
			_ = r.Reply(true, marshal(VersionInfo{Protocol: ProtocolVersion}))
		default:
			_ = r.Reply(true, make([]byte, maxPayload+1))
		}
	})
	c, err := NewClient(testCtx(t), testLogger(t), host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Ready(testCtx(t)); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("err = %v, want a too-large reply error", err)
	}
	// A reply that is not JSON is an error too, not a zero value.
	if _, err := c.SetIdentity(testCtx(t), Identity{}); err == nil {
		t.Fatal("garbage reply accepted")
	}
}

// The agent's version reply disagreeing with its identification string is
// a version error as well.
func TestHostileVersionReplyMismatch(t *testing.T) {
	host, g := socketPair(t)
	go fakeSSHServer(t, g, ServerVersion(ProtocolVersion), func(r *ssh.Request) {
		_ = r.Reply(true, marshal(VersionInfo{Protocol: 7}))
	})
	_, err := NewClient(testCtx(t), testLogger(t), host)
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Agent != 7 {
		t.Fatalf("err = %v, want a version error for 7", err)
	}
}

// The guest side survives garbage from a previous host: ServeConn fails,
// and the next connection is served.
func TestServerSurvivesGarbage(t *testing.T) {
	srv, err := NewServer(testLogger(t), newFakeSystem(), "x")
	if err != nil {
		t.Fatal(err)
	}
	host, g := socketPair(t)
	go func() {
		_, _ = host.Write([]byte("\x00\xffnot ssh at all\r\n" + strings.Repeat("z", 4096)))
		host.Close()
	}()
	if err := srv.ServeConn(testCtx(t), g); err == nil {
		t.Fatal("garbage served")
	}
	host2, g2 := socketPair(t)
	go func() { _ = srv.ServeConn(testCtx(t), g2) }()
	c, err := NewClient(testCtx(t), testLogger(t), host2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Ready(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}
