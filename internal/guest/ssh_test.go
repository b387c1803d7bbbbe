package guest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/identity"
)

// fixture is a client key, a known_hosts path and a guest (test server)
// with its own host key.
type fixture struct {
	signer ssh.Signer
	kh     string
	host   ssh.Signer
	srv    *testServer
	target Target
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	signer, _, err := identity.EnsureClientKey(filepath.Join(dir, "state", "ssh", "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{signer: signer, kh: filepath.Join(dir, "state", "known_hosts"), host: newEd25519Signer(t)}
	f.srv = startTestServer(t, "127.0.0.1:0", signer.PublicKey(), f.host)
	f.target = Target{Addr: f.srv.AddrPort(), Name: "web", User: "banger"}
	return f
}

func (f *fixture) pin(t *testing.T, key ssh.PublicKey) {
	t.Helper()
	if err := identity.Pin(f.kh, []string{f.target.Addr.String(), f.target.Name}, key); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) dial(t *testing.T, tofu bool) (*ssh.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.target, f.signer, f.kh, tofu)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func mustDial(t *testing.T, f *fixture, tofu bool) *ssh.Client {
	t.Helper()
	c, err := f.dial(t, tofu)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, c *ssh.Client, argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, err := Run(ctx, c, argv, nil, &o, &e)
	if err != nil {
		t.Fatalf("run %q: %v", argv, err)
	}
	return code, o.String(), e.String()
}

func assertMismatch(t *testing.T, err error, f *fixture) {
	t.Helper()
	if err == nil {
		t.Fatal("dial accepted a host key that is not the pinned one")
	}
	if !errors.Is(err, identity.ErrHostKeyMismatch) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("want a host key mismatch (failed precondition), got %v", err)
	}
	for _, want := range []string{`vm "web"`, f.kh, "deleting a VM removes its pins"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
}

func TestDialPinnedKeyAccepted(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)
	code, out, _ := run(t, c, "echo", "hi")
	if code != 0 || out != "hi\n" {
		t.Fatalf("got code %d output %q", code, out)
	}
	if got := f.srv.snapshot().users; len(got) != 1 || got[0] != "banger" {
		t.Fatalf("logged in as %q", got)
	}
	c.Close()
}

func TestDialWrongKeyRefused(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, newEd25519Signer(t).PublicKey())
	_, err := f.dial(t, false)
	assertMismatch(t, err, f)
	_, err = f.dial(t, true) // trust on first use never overrides a pin
	assertMismatch(t, err, f)

	// WaitReady gives up at once on a mismatch: it is not a boot delay.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err = WaitReady(ctx, f.target, f.signer, f.kh, false)
	assertMismatch(t, err, f)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("WaitReady took %v to report a mismatch", time.Since(start))
	}

	// A pin by name alone also refuses: the name is checked as well as the IP.
	if err := identity.RemovePins(f.kh, f.target.Addr.String(), "web"); err != nil {
		t.Fatal(err)
	}
	if err := identity.Pin(f.kh, []string{"web"}, newEd25519Signer(t).PublicKey()); err != nil {
		t.Fatal(err)
	}
	_, err = f.dial(t, true)
	assertMismatch(t, err, f)
}

func TestDialWithoutPinRefusedUnlessTOFU(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	_, err := f.dial(t, false)
	if !errors.Is(err, identity.ErrHostKeyUnknown) || !strings.Contains(err.Error(), f.kh) {
		t.Fatalf("want unknown host key naming %s, got %v", f.kh, err)
	}
	if _, err := os.Stat(f.kh); !os.IsNotExist(err) {
		t.Fatalf("a refused dial wrote %s: %v", f.kh, err)
	}
}

func TestTOFUPinsFirstKeyThenRefusesChange(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	c := mustDial(t, f, true)
	c.Close()
	data, err := os.ReadFile(f.kh)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(data))
	wantHosts := "[127.0.0.1]:" + strings.TrimPrefix(f.target.Addr.String(), "127.0.0.1:") + ",web "
	if !strings.HasPrefix(line, wantHosts) || !strings.Contains(line, strings.Fields(string(ssh.MarshalAuthorizedKey(f.host.PublicKey())))[1]) {
		t.Fatalf("TOFU pin line %q, want hosts %q and the server's key", line, wantHosts)
	}
	if fi, _ := os.Stat(f.kh); fi.Mode().Perm() != 0o600 {
		t.Fatalf("known_hosts mode %o", fi.Mode().Perm())
	}
	// Same key again: accepted, nothing added.
	c = mustDial(t, f, true)
	c.Close()
	if again, _ := os.ReadFile(f.kh); !bytes.Equal(again, data) {
		t.Fatalf("second dial changed known_hosts:\n%s", again)
	}

	// The guest comes back on the same address with another key.
	addr := f.srv.ln.Addr().String()
	f.srv.Close()
	f.srv = startTestServer(t, addr, f.signer.PublicKey(), newEd25519Signer(t))
	_, err = f.dial(t, true)
	assertMismatch(t, err, f)
}

func TestRemovePinsThenRepin(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	other := []string{"172.30.0.9", "db"}
	if err := identity.Pin(f.kh, other, newEd25519Signer(t).PublicKey()); err != nil {
		t.Fatal(err)
	}
	mustDial(t, f, false).Close()

	// Delete the VM; a new one gets the same IP and name and its own key.
	if err := identity.RemovePins(f.kh, f.target.Addr.String(), f.target.Name); err != nil {
		t.Fatal(err)
	}
	addr := f.srv.ln.Addr().String()
	f.srv.Close()
	host2 := newEd25519Signer(t)
	f.srv = startTestServer(t, addr, f.signer.PublicKey(), host2)
	f.pin(t, host2.PublicKey())
	mustDial(t, f, false).Close()

	// And for an imported image (TOFU) after a delete.
	if err := identity.RemovePins(f.kh, f.target.Addr.String(), f.target.Name); err != nil {
		t.Fatal(err)
	}
	f.srv.Close()
	f.srv = startTestServer(t, addr, f.signer.PublicKey(), newEd25519Signer(t))
	mustDial(t, f, true).Close()

	// The other VM's pin survived all of it.
	data, _ := os.ReadFile(f.kh)
	if !strings.Contains(string(data), "172.30.0.9,db ssh-ed25519 ") {
		t.Fatalf("other VM's pin lost:\n%s", data)
	}
	if n := strings.Count(string(data), "\n"); n != 2 {
		t.Fatalf("want 2 pins, got:\n%s", data)
	}
}

func TestPinReplacesAndAsksForPinnedType(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	// The guest also has an ECDSA key, which an unrestricted client might
	// pick; banger asks for the pinned ed25519 key only.
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	es, err := ssh.NewSignerFromKey(ek)
	if err != nil {
		t.Fatal(err)
	}
	addr := f.srv.ln.Addr().String()
	f.srv.Close()
	f.srv = startTestServer(t, addr, f.signer.PublicKey(), es, f.host)

	f.pin(t, newEd25519Signer(t).PublicKey())
	f.pin(t, f.host.PublicKey()) // replaces the first pin
	data, _ := os.ReadFile(f.kh)
	if strings.Count(string(data), "\n") != 1 {
		t.Fatalf("Pin did not replace the old lines:\n%s", data)
	}
	mustDial(t, f, false).Close()

	if err := identity.Pin(f.kh, []string{"a b"}, f.host.PublicKey()); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("pin of a host with a space: %v", err)
	}
}

func TestRunExitCodesAndStreams(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)

	if code, _, _ := run(t, c, "true"); code != 0 {
		t.Errorf("true: code %d", code)
	}
	if code, _, _ := run(t, c, "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("exit 3: code %d", code)
	}
	code, out, errOut := run(t, c, "sh", "-c", "echo to-out; echo to-err >&2; exit 5")
	if code != 5 || out != "to-out\n" || errOut != "to-err\n" {
		t.Errorf("got code %d stdout %q stderr %q", code, out, errOut)
	}
	// Killed by a signal: 128+n, also for signals x/crypto does not know.
	if code, _, _ := run(t, c, "sh", "-c", "kill -USR1 $$"); code != 128+10 {
		t.Errorf("USR1: code %d, want 138", code)
	}
	if code, _, _ := run(t, c, "sh", "-c", "kill -KILL $$"); code != 128+9 {
		t.Errorf("KILL: code %d, want 137", code)
	}
	if got := f.srv.snapshot().signalled; len(got) != 2 || got[0] != "USR1" || got[1] != "KILL" {
		t.Errorf("the server saw signal deaths %q: the exit-signal path was not exercised", got)
	}

	// stdin reaches the command.
	var o bytes.Buffer
	code, err := Run(context.Background(), c, []string{"tr", "a-z", "A-Z"}, strings.NewReader("hello"), &o, nil)
	if err != nil || code != 0 || o.String() != "HELLO" {
		t.Errorf("stdin: code %d err %v output %q", code, err, o.String())
	}
	c.Close()
}

func TestRunArgvQuoting(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)
	args := []string{
		"plain", "with space", "it's", `"double"`, "$HOME", "${PATH}", "a;b", "a&&b", "a|b",
		"line1\nline2", "", "*", "~", "~root", "A=b", "-n", `back\slash`, "tab\there", "$(id)",
		"`id`", "é ü", "#hash", "!bang", "'", "''", "\\'", "{a,b}", "<in", ">out",
	}
	code, out, errOut := run(t, c, append([]string{"printf", `%s\0`}, args...)...)
	if code != 0 {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
	got := strings.Split(strings.TrimSuffix(out, "\x00"), "\x00")
	if len(got) != len(args) {
		t.Fatalf("got %d arguments %q, want %d", len(got), got, len(args))
	}
	for i := range args {
		if got[i] != args[i] {
			t.Errorf("argument %d: got %q, want %q", i, got[i], args[i])
		}
	}
	// A first argument that looks like an assignment is still the command.
	if code, _, _ := run(t, c, "A=b"); code != 127 {
		t.Errorf("A=b ran as an assignment (code %d), not as a command", code)
	}
	if _, err := QuoteArgv([]string{"a\x00b"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("NUL: %v", err)
	}
	if _, err := QuoteArgv(nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("empty argv: %v", err)
	}
	c.Close()
}

func TestRunCancel(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, c, []string{"sleep", "30"}, nil, nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's error, got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.srv.runningCommands() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := f.srv.runningCommands(); n != 0 {
		t.Fatalf("%d commands still running on the guest after cancel", n)
	}
	// The client is still usable.
	if code, out, _ := run(t, c, "echo", "ok"); code != 0 || out != "ok\n" {
		t.Fatalf("after cancel: %d %q", code, out)
	}
	c.Close()
}

func TestShellWithoutTerminal(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	c := mustDial(t, f, false)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		w.WriteString("echo hello-$((40+2))\nexit 7\n")
		w.Close()
	}()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code, err := Shell(ctx, c, r, &out, &errOut)
	if err != nil || code != 7 {
		t.Fatalf("shell: code %d err %v", code, err)
	}
	if !strings.Contains(out.String(), "hello-42") {
		t.Fatalf("shell output %q", out.String())
	}
	p := f.srv.snapshot().ptyReqs
	if len(p) != 1 || p[0].Cols != 80 || p[0].Rows != 24 || p[0].Term == "" {
		t.Fatalf("pty requests %+v, want one 80x24", p)
	}
	c.Close()
}

func TestWaitReady(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	addr := f.srv.ln.Addr().String()
	f.srv.Close() // the guest is still booting

	// Nothing answers: ctx bounds the wait and the last error is reported.
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	err := WaitReady(ctx, f.target, f.signer, f.kh, false)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errdefs.ErrUnavailable) ||
		!strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("want a deadline error with the last error, got %v", err)
	}

	// sshd comes up while WaitReady polls.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- WaitReady(ctx, f.target, f.signer, f.kh, false) }()
	time.Sleep(500 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("WaitReady returned %v before the server was up", err)
	default:
	}
	f.srv = startTestServer(t, addr, f.signer.PublicKey(), f.host)
	if err := <-done; err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
}

func TestDialHonoursContext(t *testing.T) {
	checkLeaks(t)
	f := newFixture(t)
	f.pin(t, f.host.PublicKey())
	// A listener that accepts and never speaks SSH: the handshake hangs.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	tgt := f.target
	tgt.Addr = ln.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, tgt, f.signer, f.kh, false)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("dial to a silent server: %v after %v", err, time.Since(start))
	}
}
