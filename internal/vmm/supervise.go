package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/logcap"
	"github.com/banger-vm/banger/internal/system"
)

// A VMM with a capped log runs under a supervisor: the daemon's binary
// re-executed as `bangerd _logpipe --cap N --exit-file F LOG -- VMM ARGS...`
// (logcap.ForwarderCommand). The supervisor is the VMM's parent and its
// log forwarder: it opens the log and reserves room in it, starts the VMM
// with its stdout and stderr on a pipe it copies into the capped log, and,
// when the VMM ends, writes how (ExitFile) before it exits. It lives in
// its own session, like the VMM, so both outlive the daemon; a daemon
// restarted meanwhile reads the exit file of a re-adopted VMM
// (ReadExitFile). While the daemon that spawned it runs, the supervisor
// also tells it on a pipe (fd 3): "ok PID STARTTIME" once the VMM runs (or
// "err ERRNO MESSAGE" when the log cannot be opened or has no room,
// "vmmerr MESSAGE" when the VMM cannot be started), then
// "exit CODE SIGNAL UNIXNANO".

// ExitFileName is the exit file's name in the VM dir.
const ExitFileName = "vmm.exit"

// ExitFileMode is its mode, whatever the umask.
const ExitFileMode os.FileMode = 0o600

// ExitFile is the path of the exit file in vmDir.
func ExitFile(vmDir string) string { return filepath.Join(vmDir, ExitFileName) }

// exitRecord is the exit file's content (JSON). PID and StartTime name the
// process, so an exit file of an earlier run is never taken for this one.
type exitRecord struct {
	PID       int       `json:"pid"`
	StartTime uint64    `json:"start_time"`
	Code      int       `json:"code"`
	Signal    int       `json:"signal,omitempty"`
	At        time.Time `json:"at"`
}

// ReadExitFile returns how the VMM process pid (started at startTime)
// ended, as its supervisor wrote it in vmDir; false if it wrote nothing
// for that process (no supervisor, an older banger, a full disk).
func ReadExitFile(vmDir string, pid int, startTime uint64) (Exit, bool) {
	b, err := os.ReadFile(ExitFile(vmDir))
	if err != nil {
		return Exit{}, false
	}
	var r exitRecord
	if json.Unmarshal(b, &r) != nil || r.PID != pid || r.StartTime != startTime {
		return Exit{}, false
	}
	return Exit{PID: r.PID, Code: r.Code, Signal: syscall.Signal(r.Signal), At: r.At}, true
}

// writeExitFile writes r to path: a temporary file, then a rename.
func writeExitFile(path string, r exitRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, ExitFileMode)
	if err != nil {
		return err
	}
	err = f.Chmod(ExitFileMode)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
	}
	if err = errors.Join(err, f.Close()); err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// SuperviseConfig is what the supervisor runs and where it writes.
type SuperviseConfig struct {
	LogPath  string
	LogCap   int64
	ExitFile string
	Path     string // the VMM binary
	Args     []string
	// Ack, if set, is where the daemon says it has recorded the VMM (one
	// byte, fd 4). If it closes first (the daemon died, or could not
	// record the VMM), nobody would ever own the VMM: it is killed.
	Ack *os.File
}

// AckFD is the supervisor's descriptor for SuperviseConfig.Ack.
const AckFD = logcap.ReadyFD + 1

// supervisorReadyTimeout bounds how long spawnSupervised waits for the
// supervisor to say the VMM runs.
const supervisorReadyTimeout = 10 * time.Second

// Supervise is the supervisor's main (see above): ready is fd 3. It
// returns once the VMM has ended and its output is drained.
func Supervise(cfg SuperviseConfig, ready *os.File) error {
	// The VMM must not inherit the ready pipe: its end would hold the
	// daemon's reader open after the supervisor is gone.
	unix.CloseOnExec(int(ready.Fd()))
	fail := func(err error) error {
		var errno syscall.Errno
		errors.As(err, &errno)
		fmt.Fprintf(ready, "err %d %s\n", int(errno), strings.ReplaceAll(err.Error(), "\n", " "))
		ready.Close()
		return err
	}
	w, err := logcap.Open(cfg.LogPath, cfg.LogCap)
	if err != nil {
		return fail(err)
	}
	defer w.Close()
	if err := w.Reserve(min(logcap.StartRoom, cfg.LogCap/2)); err != nil {
		return fail(err)
	}
	r, out, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("log pipe: %w", err))
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(cfg.Path, cfg.Args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	out.Close()
	devnull.Close()
	if err != nil {
		fmt.Fprintf(ready, "vmmerr start %s: %s\n", cfg.Path, strings.ReplaceAll(err.Error(), "\n", " "))
		ready.Close()
		return err
	}
	pid := cmd.Process.Pid
	st, _ := system.ReadProcStat(pid) // not yet reaped: readable
	fmt.Fprintf(ready, "ok %d %d\n", pid, st.StartTime)

	drained := make(chan error, 1)
	go func() { drained <- logcap.Drain(r, w) }()
	if cfg.Ack != nil {
		unix.CloseOnExec(int(cfg.Ack.Fd()))
		b := make([]byte, 1)
		if n, _ := cfg.Ack.Read(b); n != 1 {
			// The daemon is gone (or failed to record the VMM) before it
			// knew the VMM's pid: no record names it, so nothing would
			// ever stop it. It ends now.
			fmt.Fprintf(w, "[banger %s: the daemon did not record this vmm (pid %d): killed]\n", time.Now().UTC().Format(time.RFC3339), pid)
			_ = cmd.Process.Kill()
		}
		cfg.Ack.Close()
	}
	_ = cmd.Wait() // the status is in ProcessState
	e := exitOf(cmd.ProcessState)
	werr := writeExitFile(cfg.ExitFile, exitRecord{PID: pid, StartTime: st.StartTime, Code: e.Code, Signal: int(e.Signal), At: e.At})
	if werr != nil {
		fmt.Fprintf(w, "[banger %s: could not record how the vmm ended (%s): %v]\n", time.Now().UTC().Format(time.RFC3339), e.describe(), werr)
	}
	// The daemon that spawned us may be gone: then nobody reads this.
	fmt.Fprintf(ready, "exit %d %d %d\n", e.Code, int(e.Signal), e.At.UnixNano())
	ready.Close()
	return errors.Join(<-drained, werr)
}

func (e Exit) describe() string {
	if e.Signal != 0 {
		return "signal " + strconv.Itoa(int(e.Signal))
	}
	return "code " + strconv.Itoa(e.Code)
}

// spawnSupervised starts path under a supervisor (see above) and waits
// until the VMM runs; opts.OnExit hears the exit the supervisor reports
// while this process lives.
func spawnSupervised(path string, args []string, opts SpawnOptions) (Process, error) {
	if opts.ExitFile == "" {
		return Process{}, errors.New("a supervised vmm needs an exit file")
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return Process{}, fmt.Errorf("supervisor pipe: %w", err)
	}
	defer readyW.Close()
	ackR, ackW, err := os.Pipe()
	if err != nil {
		readyR.Close()
		return Process{}, fmt.Errorf("supervisor pipe: %w", err)
	}
	defer ackW.Close() // unwritten: the supervisor kills the vmm
	defer ackR.Close()
	sargs := []string{logcap.ForwarderCommand, "--cap", strconv.FormatInt(opts.LogCap, 10), "--exit-file", opts.ExitFile, opts.LogPath, "--", path}
	cmd := exec.Command("/proc/self/exe", append(sargs, args...)...)
	cmd.Args[0] = "banger-logpipe" // its name in ps; distinct from the daemon and the CLI
	cmd.ExtraFiles = []*os.File{readyW, ackR}
	cmd.Dir = "/" // pin no directory of the daemon's
	// One reader, one writer: a single P keeps its threads and memory low.
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		readyR.Close()
		return Process{}, fmt.Errorf("start the vmm's supervisor: %w", err)
	}
	readyW.Close() // EOF once the supervisor is gone
	ackR.Close()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	br := bufio.NewReader(readyR)
	_ = readyR.SetReadDeadline(time.Now().Add(supervisorReadyTimeout))
	line, rerr := br.ReadString('\n')
	p, err := parseReady(strings.TrimSpace(line), opts.LogPath)
	if err != nil {
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("the vmm's supervisor did not answer within %s", supervisorReadyTimeout)
		}
		_ = cmd.Process.Kill()
		<-exited
		readyR.Close()
		return Process{}, err
	}
	_ = readyR.SetReadDeadline(time.Time{})
	go func() {
		defer readyR.Close()
		line, _ := br.ReadString('\n')
		if e, ok := parseExit(strings.TrimSpace(line), p.PID); ok && opts.OnExit != nil {
			opts.OnExit(e)
		}
	}()
	if !system.Alive(p.PID, p.StartTime) {
		return Process{}, fmt.Errorf("%s exited immediately", path)
	}
	if opts.OnStarted != nil {
		if err := opts.OnStarted(p); err != nil {
			return Process{}, errors.Join(fmt.Errorf("record the new vmm: %w", err), Kill(context.Background(), p))
		}
	}
	if _, err := ackW.Write([]byte{'k'}); err != nil {
		return Process{}, errors.Join(fmt.Errorf("vmm supervisor: %w", err), Kill(context.Background(), p))
	}
	return p, nil
}

// parseReady reads "ok PID STARTTIME", "err ERRNO MESSAGE" or "vmmerr
// MESSAGE".
func parseReady(line, logPath string) (Process, error) {
	if msg, ok := strings.CutPrefix(line, "vmmerr "); ok {
		return Process{}, errors.New(msg)
	}
	f := strings.SplitN(line, " ", 3)
	switch {
	case len(f) == 3 && f[0] == "ok":
		pid, err1 := strconv.Atoi(f[1])
		st, err2 := strconv.ParseUint(f[2], 10, 64)
		if err1 == nil && err2 == nil && pid > 0 {
			return Process{PID: pid, StartTime: st}, nil
		}
	case len(f) >= 2 && f[0] == "err":
		n, _ := strconv.Atoi(f[1])
		msg := ""
		if len(f) == 3 {
			msg = f[2]
		}
		if n == 0 {
			return Process{}, logcap.StartError(logPath, errors.New(msg))
		}
		return Process{}, logcap.StartError(logPath, &supervisorError{msg: msg, errno: syscall.Errno(n)})
	}
	return Process{}, fmt.Errorf("the vmm's supervisor ended before starting it (answer %q)", line)
}

// parseExit reads "exit CODE SIGNAL UNIXNANO".
func parseExit(line string, pid int) (Exit, bool) {
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "exit" {
		return Exit{}, false
	}
	code, err1 := strconv.Atoi(f[1])
	sig, err2 := strconv.Atoi(f[2])
	at, err3 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Exit{}, false
	}
	return Exit{PID: pid, Code: code, Signal: syscall.Signal(sig), At: time.Unix(0, at).UTC()}, true
}

// supervisorError is an error the supervisor reported: its text, and the
// errno under it.
type supervisorError struct {
	msg   string
	errno syscall.Errno
}

func (e *supervisorError) Error() string { return e.msg }
func (e *supervisorError) Unwrap() error { return e.errno }
