package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SerialPortPath is where the guest finds banger's virtio-serial port
// (QEMU: -device virtserialport,name=banger.agent).
const SerialPortPath = "/dev/virtio-ports/" + SerialPortName

// SerialPortName is the virtio-serial port's name.
const SerialPortName = "banger.agent"

// VsockPort is the vsock port the agent listens on (Firecracker).
const VsockPort = 1024

// retryDelay paces the serve loops after an error: a missing device or a
// broken connection must not spin the CPU.
const retryDelay = 250 * time.Millisecond

// ServeDevice serves the host over the virtio-serial port at path (""
// finds the port named SerialPortName) until ctx ends: one host
// connection after another, each starting with the sync exchange (see
// serial.go).
func (s *Server) ServeDevice(ctx context.Context, path string) error {
	for ctx.Err() == nil {
		p := path
		if p == "" {
			p = findSerialPort()
		}
		f, err := os.OpenFile(p, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			s.logger.Debug("open agent port", "path", p, "err", err)
			sleep(ctx, 4*retryDelay)
			continue
		}
		err = s.serveStream(ctx, fileConn{f}, func() error { return waitReadable(ctx, f) })
		f.Close()
		if err != nil && ctx.Err() == nil {
			s.logger.Warn("agent port failed, reopening", "path", p, "err", err)
			sleep(ctx, retryDelay)
		}
	}
	return ctx.Err()
}

// findSerialPort returns the device of the port named SerialPortName:
// udev's /dev/virtio-ports/ link where there is one, else the /dev/vportNpM
// node whose sysfs name matches (guests without udev).
func findSerialPort() string {
	if _, err := os.Stat(SerialPortPath); err == nil {
		return SerialPortPath
	}
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == SerialPortName {
			return "/dev/" + filepath.Base(filepath.Dir(n))
		}
	}
	return SerialPortPath
}

// waitReadable waits until the host has written to the port. The agent
// speaks only after the host (whose SSH client sends its version line at
// once): what it wrote with no host connected would be lost, and the host
// would wait for a version line that never comes.
//
// A port with no host polls as hung up at once (level-triggered), so the
// wait is edge-triggered: the kernel's virtio console driver wakes the
// port's waiters when the host connects and when data comes, and an
// EPOLLET registration reports each such wake-up once. A restored guest's
// agent, waiting here with no host, so answers the new host as soon as it
// writes, not after a sleep. Every retryDelay the port is polled anyway,
// in case a wake-up was missed.
func waitReadable(ctx context.Context, f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll: %w", err)
	}
	defer unix.Close(ep)
	var ctlErr error
	if err := rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLET, Fd: int32(fd)}
		ctlErr = unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}); err != nil {
		return err
	}
	if ctlErr != nil {
		return fmt.Errorf("epoll %s: %w", f.Name(), ctlErr)
	}
	events := make([]unix.EpollEvent, 1)
	for ctx.Err() == nil {
		n, err := unix.EpollWait(ep, events, int(retryDelay/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("epoll wait %s: %w", f.Name(), err)
		}
		if n > 0 && events[0].Events&unix.EPOLLIN != 0 {
			return nil
		}
		if n == 0 { // no wake-up for a while: look for ourselves
			ready, err := readable(rc)
			if err != nil {
				return fmt.Errorf("poll %s: %w", f.Name(), err)
			}
			if ready {
				return nil
			}
		}
	}
	return ctx.Err()
}

// readable polls the port once, without waiting.
func readable(rc syscall.RawConn) (bool, error) {
	var ready bool
	var pollErr error
	if err := rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			pollErr = err
			return
		}
		ready = n > 0 && fds[0].Revents&unix.POLLIN != 0
	}); err != nil {
		return false, err
	}
	return ready, pollErr
}

// ServeListener serves every connection ln accepts (vsock), each on its
// own, until ctx ends; it closes ln.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			s.logger.Warn("accept", "err", err)
			sleep(ctx, retryDelay)
			continue
		}
		go func() {
			if err := s.ServeConn(ctx, c); err != nil && !errors.Is(err, net.ErrClosed) {
				s.logger.Info("host connection ended", "err", err)
			}
		}()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ListenVsock listens on the guest's vsock port (any CID: the host
// connects to the guest's own).
func ListenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w (hint: the guest kernel needs vsock support)", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind vsock port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen on vsock port %d: %w", port, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), fmt.Sprintf("vsock:%d", port)), port: port}, nil
}

type vsockListener struct {
	f    *os.File
	port uint32
}

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, net.ErrClosed
	}
	var nfd int
	var acceptErr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, _, acceptErr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return !errors.Is(acceptErr, unix.EAGAIN)
	})
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	if acceptErr != nil {
		return nil, fmt.Errorf("accept on vsock port %d: %w", l.port, acceptErr)
	}
	return fileConn{os.NewFile(uintptr(nfd), "vsock")}, nil
}

func (l *vsockListener) Close() error { return l.f.Close() }

func (l *vsockListener) Addr() net.Addr { return fileAddr(l.f.Name()) }
