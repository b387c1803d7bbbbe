package logcap

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
)

// ForwarderCommand is the hidden banger subcommand that runs Forward:
//
//	bangerd _logpipe --cap BYTES FILE   (the pipe on stdin, the ready pipe on fd 3)
const ForwarderCommand = "_logpipe"

// pipeSize is asked of the kernel for the forwarder's pipe, so a burst of
// output does not stall the VMM while the forwarder writes.
const pipeSize = 1 << 20

// ReadyFD is the forwarder's descriptor on which it says whether its log
// is open and has room (see Forward).
const ReadyFD = 3

// readyTimeout bounds how long SpawnForwarder waits for that answer.
const readyTimeout = 10 * time.Second

// StartRoom is what a log must have room for when its VMM starts: the
// forwarder reserves it (fallocate past the end of the file, so the file's
// size does not change) before the VMM is launched, so a VMM never starts
// whose first lines of output, the boot, would be lost. It is at most half
// the cap.
const StartRoom = 64 << 10

// ForwarderConfig says where a forwarder writes.
type ForwarderConfig struct {
	// Exe is the daemon's binary (bangerd) to re-execute; empty: /proc/self/exe (the
	// running daemon's binary, even if the file was replaced since).
	Exe string
	// Path is the log file (its rotated half is Path.1).
	Path string
	// Cap bounds Path and Path.1 together, in bytes.
	Cap int64
}

// SpawnForwarder starts a log forwarder in its own session (it outlives
// the daemon, like the VMM) and waits until it has opened the log and
// reserved StartRoom in it. It returns the write end of the forwarder's
// pipe, for the VMM's stdout and stderr, and the forwarder's pid. The
// caller passes the file to the VMM's exec.Cmd, closes it once the VMM
// started (or failed to), and the forwarder exits when the VMM's copy
// closes: when the VMM exits. The forwarder is reaped by this process
// while it lives.
//
// A log that cannot be opened, or has no room, is an error naming the
// log (out_of_space when its filesystem is full), and no forwarder is
// left running.
func SpawnForwarder(cfg ForwarderConfig) (*os.File, int, error) {
	if cfg.Cap < minCap {
		return nil, 0, fmt.Errorf("log cap %d bytes is below the minimum %d", cfg.Cap, minCap)
	}
	exe := cfg.Exe
	if exe == "" {
		exe = "/proc/self/exe"
	}
	r, wr, err := os.Pipe() // both ends close-on-exec
	if err != nil {
		return nil, 0, fmt.Errorf("log pipe: %w", err)
	}
	defer r.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		wr.Close()
		return nil, 0, fmt.Errorf("log ready pipe: %w", err)
	}
	defer readyR.Close()
	// Best effort: a smaller pipe works, it only absorbs shorter bursts.
	_, _ = unix.FcntlInt(wr.Fd(), unix.F_SETPIPE_SZ, pipeSize)
	cmd := exec.Command(exe, ForwarderCommand, "--cap", strconv.FormatInt(cfg.Cap, 10), cfg.Path)
	cmd.Args[0] = "banger-logpipe" // its name in ps; distinct from the daemon and the CLI
	cmd.Stdin = r
	cmd.ExtraFiles = []*os.File{readyW} // fd 3 (ReadyFD)
	cmd.Dir = "/"                       // pin no directory of the daemon's
	// One reader, one writer: a single P keeps its threads and memory low.
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close() // the forwarder holds its own copy: EOF when it exits
	if err != nil {
		wr.Close()
		return nil, 0, fmt.Errorf("start the log forwarder: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	if err := awaitReady(readyR, cfg.Path); err != nil {
		wr.Close() // a forwarder still reading ends on EOF
		_ = cmd.Process.Kill()
		<-exited
		return nil, 0, err
	}
	return wr, cmd.Process.Pid, nil
}

// awaitReady reads the forwarder's answer: "ok", or "err ERRNO MESSAGE".
func awaitReady(r *os.File, path string) error {
	_ = r.SetReadDeadline(time.Now().Add(readyTimeout)) // a pipe: pollable
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	line := strings.TrimSpace(string(b))
	switch {
	case line == "ok":
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("vm log %s: the log forwarder did not answer within %s", path, readyTimeout)
	case strings.HasPrefix(line, "err "):
		return readyError(path, strings.TrimPrefix(line, "err "))
	}
	return fmt.Errorf("vm log %s: the log forwarder exited before opening it", path)
}

// readyError rebuilds the forwarder's failure so errors.Is finds its errno
// (syscall.ENOSPC: out of space).
func readyError(path, s string) error {
	num, msg, _ := strings.Cut(s, " ")
	n, _ := strconv.Atoi(num)
	if n == 0 {
		return fmt.Errorf("vm log %s: %s", path, msg)
	}
	return StartError(path, &forwarderError{msg: msg, errno: syscall.Errno(n)})
}

// StartError is the error of a start whose log at path could not be
// opened or reserved (err): out_of_space when its filesystem is full.
func StartError(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return errdefs.OutOfSpace("vm log %s has no room for the vm's first output: %w (hint: free space on its filesystem, then start the vm again)", path, err)
	}
	return fmt.Errorf("vm log %s: %w", path, err)
}

// forwarderError is an error the forwarder reported: its text, and the
// errno under it.
type forwarderError struct {
	msg   string
	errno syscall.Errno
}

func (e *forwarderError) Error() string { return e.msg }
func (e *forwarderError) Unwrap() error { return e.errno }

// Forward copies r into the capped log at path until r ends. Before it
// reads, it opens the log, reserves StartRoom in it and says so on ready
// ("ok"; or "err ERRNO MESSAGE" and returns the error); ready is then
// closed. It never stops reading while r is open: what cannot be written
// is dropped.
func Forward(r io.Reader, path string, limit int64, ready io.WriteCloser) (err error) {
	w, err := Open(path, limit)
	if err == nil {
		if err = w.Reserve(min(StartRoom, limit/2)); err != nil {
			w.Close()
		}
	}
	if err != nil {
		var errno syscall.Errno
		errors.As(err, &errno)
		fmt.Fprintf(ready, "err %d %s\n", int(errno), strings.ReplaceAll(err.Error(), "\n", " "))
		ready.Close()
		return err
	}
	if _, err := io.WriteString(ready, "ok\n"); err != nil {
		w.Close()
		return fmt.Errorf("say the log is ready: %w", err)
	}
	ready.Close()
	defer func() { err = errors.Join(err, w.Close()) }()
	return Drain(r, w)
}

// Drain copies r into w until r ends. It never stops reading while r is
// open: what cannot be written is dropped (Writer.Write).
func Drain(r io.Reader, w *Writer) error {
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
