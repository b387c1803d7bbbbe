package logcap

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ForwarderCommand is the hidden banger subcommand that runs Forward:
//
//	banger _logpipe --cap BYTES FILE   (the pipe on stdin)
const ForwarderCommand = "_logpipe"

// pipeSize is asked of the kernel for the forwarder's pipe, so a burst of
// output does not stall the VMM while the forwarder writes.
const pipeSize = 1 << 20

// ForwarderConfig says where a forwarder writes.
type ForwarderConfig struct {
	// Exe is the banger binary to re-execute; empty: /proc/self/exe (the
	// running daemon's binary, even if the file was replaced since).
	Exe string
	// Path is the log file (its rotated half is Path.1).
	Path string
	// Cap bounds Path and Path.1 together, in bytes.
	Cap int64
}

// SpawnForwarder starts a log forwarder in its own session (it outlives
// the daemon, like the VMM) and returns the write end of its pipe, for the
// VMM's stdout and stderr, and the forwarder's pid. The caller passes the
// file to the VMM's exec.Cmd, closes it once the VMM started (or failed
// to), and the forwarder exits when the VMM's copy closes: when the VMM
// exits. The forwarder is reaped by this process while it lives.
func SpawnForwarder(cfg ForwarderConfig) (*os.File, int, error) {
	if cfg.Cap < minCap {
		return nil, 0, fmt.Errorf("log cap %d bytes is below the minimum %d", cfg.Cap, minCap)
	}
	exe := cfg.Exe
	if exe == "" {
		exe = "/proc/self/exe"
	}
	// Create the file now, so a log that cannot be opened fails the start
	// rather than the forwarder, silently.
	w, err := Open(cfg.Path, cfg.Cap)
	if err != nil {
		return nil, 0, err
	}
	if err := w.Close(); err != nil {
		return nil, 0, err
	}

	r, wr, err := os.Pipe() // both ends close-on-exec
	if err != nil {
		return nil, 0, fmt.Errorf("log pipe: %w", err)
	}
	defer r.Close()
	// Best effort: a smaller pipe works, it only absorbs shorter bursts.
	_, _ = unix.FcntlInt(wr.Fd(), unix.F_SETPIPE_SZ, pipeSize)
	cmd := exec.Command(exe, ForwarderCommand, "--cap", strconv.FormatInt(cfg.Cap, 10), cfg.Path)
	cmd.Args[0] = "banger-logpipe" // its name in ps; distinct from the daemon and the CLI
	cmd.Stdin = r
	cmd.Dir = "/" // pin no directory of the daemon's
	// One reader, one writer: a single P keeps its threads and memory low.
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		wr.Close()
		return nil, 0, fmt.Errorf("start the log forwarder: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	return wr, cmd.Process.Pid, nil
}

// Forward copies r into the capped log at path until r ends. It never
// stops reading while r is open: what cannot be written is dropped.
func Forward(r io.Reader, path string, limit int64) (err error) {
	w, err := Open(path, limit)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, w.Close()) }()
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n]) // never fails: drops
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the log pipe: %w", err)
		}
	}
}
