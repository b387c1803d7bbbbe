// Package logcap bounds a log file's size: a Writer keeps the file and one
// rotated copy (path and path.1), each at most half the cap, so the latest
// output is always kept and the pair never exceeds the cap. When the disk
// is full, writes are dropped and counted, never blocked or failed; a one-line
// marker says how much was lost once space comes back.
//
// A process that outlives the daemon (a VMM) writes through a forwarder:
// the daemon's binary re-executed as `bangerd _logpipe`, reading a pipe that
// is the VMM's stdout and stderr (see SpawnForwarder).
package logcap

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Mode is the mode of every log file, whatever the umask.
const Mode os.FileMode = 0o600

// minCap keeps each half large enough for the drop marker and some lines.
const minCap = 4 << 10

// Writer is a size-capped append-only log file. It is safe for concurrent
// use; each Write lands whole in one file (cut to its last cap/2 bytes if
// it is larger).
type Writer struct {
	mu      sync.Mutex
	path    string
	half    int64
	f       *os.File // nil after a failed reopen: retried on the next write
	size    int64
	dropped int64 // bytes lost since the last marker
	now     func() time.Time
}

// Open opens (creating it with Mode) the log at path, capped at limit
// bytes for path and path.1 together.
func Open(path string, limit int64) (*Writer, error) {
	if limit < minCap {
		return nil, fmt.Errorf("log cap %d bytes is below the minimum %d", limit, minCap)
	}
	w := &Writer{path: path, half: limit / 2, now: time.Now}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

// Path returns the current file; Rotated returns the older half's.
func (w *Writer) Path() string { return w.path }

// Rotated is the name of the older half of the log at path.
func Rotated(path string) string { return path + ".1" }

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, Mode)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	if err := f.Chmod(Mode); err != nil {
		f.Close()
		return fmt.Errorf("open log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("open log: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// rotate moves the current file to path.1 (replacing the older half) and
// starts an empty one.
func (w *Writer) rotate() error {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	if err := os.Rename(w.path, Rotated(w.path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return w.open()
}

// Reserve makes sure the next n bytes appended to the current file have
// room on its filesystem: it allocates them past the end of the file
// (fallocate with FALLOC_FL_KEEP_SIZE, so the file's size, and what the
// log shows, do not change). A full filesystem is syscall.ENOSPC. On a
// filesystem without fallocate, it checks the free space instead.
func (w *Writer) Reserve(n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	return ReserveFile(w.f, n)
}

// ReserveFile is Writer.Reserve for a plain file open for appending.
func ReserveFile(f *os.File, n int64) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, st.Size(), n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		var fs unix.Statfs_t
		if err = unix.Fstatfs(int(f.Fd()), &fs); err == nil && int64(fs.Bavail)*fs.Bsize < n {
			err = unix.ENOSPC
		}
	}
	if err != nil {
		return fmt.Errorf("reserve %d bytes: %w", n, err)
	}
	return nil
}

// Write appends p. It never fails and never blocks on a full disk: what
// cannot be written is dropped and counted (see Dropped).
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	if int64(len(p)) > w.half {
		p = p[int64(len(p))-w.half:]
	}
	var marker []byte
	if w.dropped > 0 {
		marker = fmt.Appendf(nil, "[banger %s: %d bytes of output dropped: no space to write them]\n",
			w.now().UTC().Format(time.RFC3339), w.dropped)
	}
	need := int64(len(marker) + len(p))
	if w.f == nil {
		if err := w.open(); err != nil {
			w.dropped += int64(len(p))
			return n, nil
		}
	}
	if w.size+need > w.half {
		if err := w.rotate(); err != nil {
			w.dropped += int64(len(p))
			return n, nil
		}
	}
	if marker != nil && w.size+need > w.half {
		marker = nil // p alone fills a half: the marker waits for the next write
	}
	if marker != nil && w.put(marker) == len(marker) {
		w.dropped = 0
	}
	if m := w.put(p); m < len(p) {
		w.dropped += int64(len(p) - m)
	}
	return n, nil
}

// put writes b and returns how much was written.
func (w *Writer) put(b []byte) int {
	m, _ := w.f.Write(b)
	w.size += int64(m)
	return m
}

// Dropped is how many bytes were lost since the last drop marker.
func (w *Writer) Dropped() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dropped
}

// Close closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// OpenReader reads the log at path as one stream: its rotated half
// (path.1), if any, then the current file. At the end it returns io.EOF;
// read again later to follow it (`vm logs -f`): when the writer has
// rotated meanwhile, the reader finishes the old file and moves on to the
// new one.
func OpenReader(path string) (io.ReadCloser, error) {
	cur, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r := &reader{path: path, cur: cur}
	old, err := os.Open(Rotated(path))
	switch {
	case err == nil:
		r.old = old
	case !errors.Is(err, os.ErrNotExist):
		cur.Close()
		return nil, err
	}
	return r, nil
}

type reader struct {
	path string
	old  *os.File // the rotated half, read first; nil once read
	cur  *os.File
}

func (r *reader) Read(p []byte) (int, error) {
	if r.old != nil {
		n, err := r.old.Read(p)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		r.old.Close()
		r.old = nil
	}
	n, err := r.cur.Read(p)
	if n > 0 || !errors.Is(err, io.EOF) {
		return n, err
	}
	// At the end: if the writer rotated, cur is now path.1, read to its
	// end; carry on with the new file.
	next, oerr := os.Open(r.path)
	if oerr != nil {
		return 0, io.EOF
	}
	a, aerr := r.cur.Stat()
	b, berr := next.Stat()
	if aerr != nil || berr != nil || os.SameFile(a, b) {
		next.Close()
		return 0, io.EOF
	}
	r.cur.Close()
	r.cur = next
	return r.cur.Read(p)
}

func (r *reader) Close() error {
	var errs []error
	if r.old != nil {
		errs = append(errs, r.old.Close())
	}
	return errors.Join(append(errs, r.cur.Close())...)
}
