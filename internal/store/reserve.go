package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// DefaultReserveBytes is the size of the state dir's reserve file: room
// for thousands of recovery writes (a stop writes a few pages to the WAL).
const DefaultReserveBytes = 8 << 20

// ReserveMode is the reserve file's mode, whatever the umask.
const ReserveMode os.FileMode = 0o600

// Option configures Open.
type Option func(*Store)

// WithReserve keeps a reserve file of size bytes at path (on the
// database's filesystem): blocks allocated while space is plentiful,
// released when a recovery write (see Recovery) finds the filesystem full,
// so that the stop, kill, delete, exit or reconcile it records still
// lands; re-created once the filesystem has room for it twice over. log
// hears of both.
func WithReserve(path string, size int64, log *slog.Logger) Option {
	return func(s *Store) { s.reserve = &reserve{path: path, size: size, log: log} }
}

type recoveryKey struct{}

// Recovery marks ctx's writes as recording a recovery: a stop, kill or
// delete, a VMM's exit, a start's rollback, the daemon's reconcile. On a
// full filesystem such a write releases the reserve and is tried again;
// other writes (a create, a start, a build) fail out of space and leave
// the reserve alone.
func Recovery(ctx context.Context) context.Context {
	return context.WithValue(ctx, recoveryKey{}, true)
}

func isRecovery(ctx context.Context) bool {
	b, _ := ctx.Value(recoveryKey{}).(bool)
	return b
}

// reserve is the state dir's reserve file.
type reserve struct {
	path string
	size int64
	log  *slog.Logger

	mu       sync.Mutex
	released bool // by this daemon, or missing and not yet re-created
}

// ensure creates the reserve if it is missing and the filesystem has room
// for it twice over (re-creating it must not fill the disk again).
func (r *reserve) ensure() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, err := os.Stat(r.path); err == nil && st.Size() == r.size {
		r.released = false
		return
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(r.path), &fs); err != nil {
		r.log.Warn("state dir reserve: cannot read free space", "path", r.path, "error", err)
		return
	}
	if free := int64(fs.Bavail) * fs.Bsize; free < 2*r.size {
		if !r.released {
			r.log.Warn("state dir reserve missing and too little space to create it", "path", r.path, "free_bytes", free, "reserve_bytes", r.size)
		}
		r.released = true
		return
	}
	if err := createReserve(r.path, r.size); err != nil {
		r.released = true
		r.log.Warn("state dir reserve not created", "path", r.path, "error", err)
		return
	}
	if r.released {
		r.log.Info("state dir reserve re-created", "path", r.path, "bytes", r.size)
	}
	r.released = false
}

// createReserve allocates size bytes at path (a temporary name, then a
// rename: a reserve is whole or absent).
func createReserve(path string, size int64) error {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, ReserveMode)
	if err != nil {
		return err
	}
	err = f.Chmod(ReserveMode)
	if err == nil {
		err = unix.Fallocate(int(f.Fd()), 0, 0, size)
		if errors.Is(err, unix.EOPNOTSUPP) { // write it out instead
			err = writeZeros(f, size)
		}
	}
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // its blocks go back
		return fmt.Errorf("create reserve %s: %w", path, err)
	}
	return nil
}

func writeZeros(f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := min(size, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

// release removes the reserve, giving its blocks back; it reports whether
// there was one to release.
func (r *reserve) release(cause error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := os.Remove(r.path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("state dir reserve: cannot release", "path", r.path, "error", err)
		}
		r.released = true
		return false
	}
	r.released = true
	r.log.Warn("state dir full: released its reserve for a recovery write", "path", r.path, "bytes", r.size, "cause", cause)
	return true
}

// outOfSpace reports a write that failed because the filesystem is full:
// ENOSPC or EDQUOT, SQLITE_FULL, or an SQLite I/O error (how a failed
// write to the WAL or its index can surface) while the filesystem of dir
// has less than a reserve's worth free.
func outOfSpace(err error, dir string, size int64) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return strings.Contains(err.Error(), "database or disk is full")
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_FULL:
		return true
	case sqlite3.SQLITE_IOERR:
		var fs unix.Statfs_t
		return dir != "" && unix.Statfs(dir, &fs) == nil && int64(fs.Bavail)*fs.Bsize < max(size, 1<<20)
	}
	return false
}

// write runs a write (a transaction or a statement). A recovery write that
// finds the filesystem full is tried again after a WAL checkpoint (the WAL
// then starts over in the blocks it has), and if it still does not fit,
// once more after releasing the reserve. After a write that succeeded, a
// released reserve is re-created when there is room.
func (s *Store) write(ctx context.Context, fn func() error) error {
	err := fn()
	r := s.reserve
	full := func(err error) bool {
		if r == nil {
			return outOfSpace(err, "", 0)
		}
		return outOfSpace(err, filepath.Dir(r.path), r.size)
	}
	if err != nil && isRecovery(ctx) && full(err) {
		s.checkpoint(ctx)
		err = fn()
		if err != nil && r != nil && full(err) && r.release(err) {
			s.checkpoint(ctx)
			err = fn()
		}
	}
	if err == nil && r != nil && r.isReleased() {
		r.ensure()
	}
	return err
}

// checkpoint copies the WAL into the database and makes the next write
// start the WAL over (RESTART: the file keeps its blocks, unlike
// TRUNCATE, whose blocks another writer could take). Best effort: on a
// full disk it may not complete.
func (s *Store) checkpoint(ctx context.Context) {
	var busy, frames, done int
	_ = s.db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(RESTART)`).Scan(&busy, &frames, &done)
}

func (r *reserve) isReleased() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.released
}
