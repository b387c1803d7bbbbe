package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

// DialSerial connects to the agent behind QEMU's virtio-serial port, whose
// host end is the unix socket path (QEMU listens there; see QEMUArgs).
// QEMU serves one connection at a time: hold one Client per VM.
func DialSerial(ctx context.Context, logger *slog.Logger, path string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, errdefs.Unavailable("guest agent: connect to %s: %v", path, err)
	}
	return newSerialClient(ctx, logger, c)
}

// newSerialClient syncs with the agent on the serial stream c, then runs
// the SSH handshake. Waiting for the sync is bounded by ctx alone (or
// handshakeTimeout when ctx has no deadline): with a long ctx it waits for
// an agent still booting, answering as soon as it runs.
func newSerialClient(ctx context.Context, logger *slog.Logger, c net.Conn) (*Client, error) {
	sctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, handshakeTimeout)
		defer cancel()
	}
	t0 := time.Now()
	if err := syncHost(sctx, c); err != nil {
		c.Close()
		return nil, err
	}
	t1 := time.Now()
	cl, err := NewClient(ctx, logger, c)
	logger.Debug("guest agent serial connection", "sync_ms", t1.Sub(t0).Milliseconds(), "handshake_ms", time.Since(t1).Milliseconds(), "err", err)
	return cl, err
}

// QEMUArgs are the QEMU arguments that give the guest banger's
// virtio-serial port (/dev/virtio-ports/banger.agent) backed by the unix
// socket path, where QEMU listens (and does not wait for a client).
func QEMUArgs(path string) []string {
	return []string{
		"-chardev", "socket,id=bangeragent,path=" + path + ",server=on,wait=off",
		"-device", "virtio-serial-pci,id=bangerserial",
		"-device", "virtserialport,bus=bangerserial.0,chardev=bangeragent,name=" + SerialPortName,
	}
}

// maxConnectReply bounds Firecracker's answer to CONNECT ("OK <port>\n").
const maxConnectReply = 64

// DialVsock connects to the agent through Firecracker's hybrid vsock: the
// unix socket udsPath (the vsock device's uds_path), the "CONNECT <port>"
// line, and Firecracker's "OK <host port>" answer; the stream is then the
// guest's port.
func DialVsock(ctx context.Context, logger *slog.Logger, udsPath string, port uint32) (*Client, error) {
	c, err := connectVsock(ctx, udsPath, port)
	if err != nil {
		return nil, err
	}
	return NewClient(ctx, logger, c)
}

func connectVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, errdefs.Unavailable("guest agent: connect to %s: %v", udsPath, err)
	}
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, errdefs.Unavailable("guest agent: vsock connect: %v", err)
	}
	// Read the answer a byte at a time: what follows the newline is the
	// guest's stream, not ours to buffer.
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			c.Close()
			return nil, errdefs.Unavailable("guest agent: vsock port %d: no answer to CONNECT: %v (hint: is banger-agent listening in the guest?)", port, err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
		if len(line) > maxConnectReply {
			c.Close()
			return nil, errdefs.Unavailable("guest agent: vsock port %d: answer to CONNECT longer than %d bytes", port, maxConnectReply)
		}
	}
	rest, ok := strings.CutPrefix(string(line), "OK ")
	if _, err := strconv.ParseUint(rest, 10, 32); !ok || err != nil {
		c.Close()
		return nil, errdefs.Unavailable("guest agent: vsock port %d: CONNECT answered %q, not \"OK <port>\"", port, line)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// signalNumber is the number of an SSH signal name ("TERM"), 0 if unknown.
func signalNumber(name string) int {
	return int(unix.SignalNum("SIG" + name))
}
