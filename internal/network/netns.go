package network

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// openNetNS returns a handle the Manager owns: a duplicate of h, or of the
// calling thread's namespace when h is unset (0 or netns.None()). It checks
// that the handle really is a network namespace.
func openNetNS(h netns.NsHandle) (netns.NsHandle, error) {
	var (
		ns  netns.NsHandle
		err error
	)
	if h <= 0 {
		ns, err = netns.Get()
		if err != nil {
			return netns.None(), fmt.Errorf("open the current network namespace: %w", err)
		}
	} else {
		fd, err := unix.FcntlInt(uintptr(h), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return netns.None(), fmt.Errorf("network namespace handle %d: %w", int(h), err)
		}
		ns = netns.NsHandle(fd)
	}
	kind, err := unix.IoctlRetInt(int(ns), unix.NS_GET_NSTYPE)
	if err != nil || kind != unix.CLONE_NEWNET {
		ns.Close()
		return netns.None(), fmt.Errorf("handle %d is not a network namespace", int(h))
	}
	return ns, nil
}

// inNetNS runs fn on an OS thread that has entered ns: for what has no
// namespace-aware API, /proc/sys/net (resolved against the opening thread's
// namespace), /dev/net/tun (a tap is created in the opener's namespace) and
// socket(2). The thread goes back to its own namespace afterwards; if it
// cannot, it stays locked, and the Go runtime discards it with the
// goroutine, so no other goroutine ever runs in ns by accident.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("open this thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// ensureSysctl sets a /proc/sys/net key in ns to value, writing only when it
// differs. key is relative to /proc/sys/net, e.g. "ipv4/ip_forward".
func ensureSysctl(ns netns.NsHandle, key, value string) error {
	path := filepath.Join("/proc/sys/net", key)
	err := inNetNS(ns, func() error {
		cur, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(bytes.TrimSpace(cur)) == value {
			return nil
		}
		return os.WriteFile(path, []byte(value+"\n"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("set sysctl net.%s=%s: %w", dotted(key), value, err)
	}
	return nil
}

func dotted(key string) string { return strings.ReplaceAll(key, "/", ".") }

// portFree reports whether a host process in ns holds port/proto on the
// IPv4 wildcard address (a listener on any address or on [::] makes the
// bind fail). A published port shadows such a process, so Publish refuses.
func portFree(ns netns.NsHandle, proto string, port uint16) (bool, error) {
	typ, ipproto := unix.SOCK_STREAM, unix.IPPROTO_TCP
	if proto == ProtoUDP {
		typ, ipproto = unix.SOCK_DGRAM, unix.IPPROTO_UDP
	}
	free := false
	err := inNetNS(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, ipproto)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if typ == unix.SOCK_STREAM {
			// Ignore TIME_WAIT leftovers; a listener still makes bind fail.
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
				return err
			}
		}
		err = unix.Bind(fd, &unix.SockaddrInet4{Port: int(port)})
		switch {
		case err == nil:
			free = true
			return nil
		case errors.Is(err, unix.EADDRINUSE):
			return nil
		default:
			return err
		}
	})
	if err != nil {
		return false, fmt.Errorf("check host port %d/%s: %w", port, proto, err)
	}
	return free, nil
}
