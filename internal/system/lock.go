package system

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// ErrLocked is what TryLockFile returns (wrapped) when another open file,
// in this process or another, holds the lock.
var ErrLocked = errors.New("held by another process")

// LockFile takes an exclusive flock on path, polling so that ctx can end
// the wait. The returned func releases it. path is a lock file (created
// with mode 0600 if missing) or an existing directory. It is the one flock
// helper: use it, or TryLockFile, rather than calling flock.
func LockFile(ctx context.Context, path string) (unlock func(), err error) {
	for {
		unlock, err := TryLockFile(path)
		if !errors.Is(err, ErrLocked) {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for lock %s (held by another process): %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TryLockFile takes an exclusive flock on path (see LockFile) without
// waiting: if it is held, the error wraps ErrLocked.
func TryLockFile(path string) (unlock func(), err error) {
	f, err := openLockable(path)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	switch {
	case err == nil:
		return func() { f.Close() }, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, ErrLocked)
	default:
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
}

func openLockable(path string) (*os.File, error) {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return os.Open(path)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(0o600); err != nil { // whatever the umask or an older file said
		f.Close()
		return nil, err
	}
	return f, nil
}
