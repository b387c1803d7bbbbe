package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
)

// Listen binds the control socket at path, readable and writable by its
// owner (root) and gid only; gid < 0 keeps root's group. A socket left by
// a dead daemon is replaced; one that answers is a live daemon: an error.
func Listen(path string, gid int) (net.Listener, error) {
	if err := layout.CheckSocketPath(path); err != nil {
		return nil, errdefs.InvalidArgument("%w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, errdefs.Conflict("a banger daemon is already serving %s (hint: use another --runtime-dir for a second daemon)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// Bind with a umask that leaves no window in which others could connect.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, 0, gid); err != nil {
			l.Close()
			return nil, err
		}
		if err := os.Chmod(path, 0o660); err != nil {
			l.Close()
			return nil, err
		}
		// Group members must also be able to reach the socket's directory.
		if err := os.Chmod(filepath.Dir(path), 0o710); err != nil {
			l.Close()
			return nil, err
		}
		if err := os.Chown(filepath.Dir(path), 0, gid); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}
