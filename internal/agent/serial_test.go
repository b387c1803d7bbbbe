package agent

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/banger-vm/banger/errdefs"
)

// One long-lived stream, as a virtio-serial port is: hosts come and go
// without the guest seeing an end of file, stale bytes are in the way, and
// every host still gets a working connection.
func TestSerialStreamReuse(t *testing.T) {
	h, g := socketPair(t)
	srv, err := NewServer(testLogger(t), newFakeSystem(), "serial")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.serveStream(ctx, g, func() error { return nil }) }()
	t.Cleanup(func() {
		cancel()
		<-served
	})

	// A previous host's leftovers: a handshake never finished, and noise.
	junk := make([]byte, 3000)
	_, _ = rand.Read(junk)
	if _, err := h.Write(append([]byte("SSH-2.0-banger/1\r\n"+syncRequest+"0000\n"), junk...)); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		lease := &reusableConn{Conn: h}
		c, err := newSerialClient(testCtx(t), testLogger(t), lease)
		if err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
		st, out, _ := run(t, c, ExecOptions{Argv: []string{"echo", "host", strings.Repeat("x", i)}})
		if st.Code != 0 || out != "host "+strings.Repeat("x", i)+"\n" {
			t.Fatalf("host %d: %q %+v", i, out, st)
		}
		if i == 2 {
			// This host leaves in the middle of a command's output.
			s, err := c.SSH().NewSession()
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Start(string(marshal(ExecRequest{Argv: []string{"sh", "-c", "yes | head -c 5000000"}}))); err != nil {
				t.Fatal(err)
			}
		}
		// The host goes away; the guest's stream stays open.
		c.Close()
		lease.release()
	}
}

func TestSerialSyncBounded(t *testing.T) {
	t.Run("silent", func(t *testing.T) {
		h, _ := socketPair(t)
		_, err := newSerialClient(shortCtx(t), testLogger(t), h)
		if errdefs.ClassOf(err) != errdefs.ClassUnavailable || !strings.Contains(err.Error(), "is banger-agent running") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("endless line", func(t *testing.T) {
		h, g := socketPair(t)
		go func() {
			b := []byte(strings.Repeat(syncReply, 1000))
			for {
				if _, err := g.Write(b); err != nil {
					return
				}
			}
		}()
		if _, err := newSerialClient(shortCtx(t), testLogger(t), h); errdefs.ClassOf(err) != errdefs.ClassUnavailable {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("wrong nonce", func(t *testing.T) {
		h, g := socketPair(t)
		go func() {
			for {
				if _, err := g.Write([]byte(syncReply + "not-yours\n")); err != nil {
					return
				}
			}
		}()
		if _, err := newSerialClient(shortCtx(t), testLogger(t), h); errdefs.ClassOf(err) != errdefs.ClassUnavailable {
			t.Fatalf("err = %v", err)
		}
	})
}
