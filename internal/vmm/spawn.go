package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/logcap"
	"github.com/banger-vm/banger/internal/system"
)

// Exit is how a VMM process ended, as its parent's wait saw it.
type Exit struct {
	PID    int
	Code   int            // exit code; -1 when killed by a signal
	Signal syscall.Signal // 0 unless killed by a signal
	At     time.Time
}

// Clean reports a normal exit with code 0 (the guest powered off).
func (e Exit) Clean() bool { return e.Signal == 0 && e.Code == 0 }

func exitOf(st *os.ProcessState) Exit {
	e := Exit{PID: st.Pid(), Code: st.ExitCode(), At: time.Now().UTC()}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.Signal = ws.Signal()
	}
	return e
}

// SpawnOptions say where a VMM's output goes and who hears of its exit.
type SpawnOptions struct {
	LogPath string
	// LogCap > 0 sends stdout and stderr through a log forwarder (see
	// logcap.SpawnForwarder) that keeps LogPath and its rotated half
	// within LogCap bytes; 0 appends to LogPath without a cap.
	LogCap int64
	// ExitFile, with LogCap > 0, runs the VMM under a supervisor that is
	// its parent and log forwarder and writes how it ended to this file
	// (see Supervise, ReadExitFile). Empty: the daemon is the parent.
	ExitFile string
	// OnExit, if set, is called once with the exit status when the process
	// ends while this daemon runs.
	OnExit func(Exit)
	// OnStarted, if set, records the new process the moment it exists; an
	// error kills it. A supervised VMM is not let go on until it returns:
	// if the daemon dies first, the supervisor kills the VMM that no
	// record would name.
	OnStarted func(Process) error
}

// Spawn starts a VMM process in its own session, so that it outlives the
// daemon, with stdin from /dev/null and stdout and stderr to the VM log
// (opts). The log must have room for logcap.StartRoom bytes, or no VMM is
// started (an out_of_space error naming the log). The daemon reaps the process if it exits while the daemon runs
// and reports its status to opts.OnExit; after a daemon restart, init
// reaps it.
func Spawn(path string, args []string, opts SpawnOptions) (Process, error) {
	if opts.LogCap > 0 && opts.ExitFile != "" {
		return spawnSupervised(path, args, opts)
	}
	var out *os.File
	if opts.LogCap > 0 {
		w, _, err := logcap.SpawnForwarder(logcap.ForwarderConfig{Path: opts.LogPath, Cap: opts.LogCap})
		if err != nil {
			return Process{}, err // names the log
		}
		out = w
	} else {
		f, err := os.OpenFile(opts.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, logcap.Mode)
		if err == nil {
			if err = logcap.ReserveFile(f, logcap.StartRoom); err != nil {
				f.Close()
			}
		}
		if err != nil {
			return Process{}, logcap.StartError(opts.LogPath, err)
		}
		out = f
	}
	// Our copy goes once the child has its own: a forwarder then ends when
	// the VMM does.
	defer out.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return Process{}, err
	}
	defer devnull.Close()

	cmd := exec.Command(path, args...)
	cmd.Stdin = devnull
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("start %s: %w", path, err)
	}
	pid := cmd.Process.Pid
	st, statErr := system.ReadProcStat(pid)
	go func() {
		_ = cmd.Wait() // the status is in ProcessState
		if opts.OnExit != nil && cmd.ProcessState != nil {
			opts.OnExit(exitOf(cmd.ProcessState))
		}
	}()
	if statErr != nil {
		// It exited (and may be reaped) before we could read it.
		return Process{}, fmt.Errorf("%s exited immediately", path)
	}
	p := Process{PID: pid, StartTime: st.StartTime}
	if opts.OnStarted != nil {
		if err := opts.OnStarted(p); err != nil {
			return Process{}, errors.Join(fmt.Errorf("record the new vmm: %w", err), Kill(context.Background(), p))
		}
	}
	return p, nil
}

// SpawnFor spawns the VMM of spec (see Spawn) and reports it through
// spec.OnSpawn; if that fails, the process is killed and the error returned.
func SpawnFor(spec Spec, path string, args []string) (Process, error) {
	opts := SpawnOptions{LogPath: spec.LogPath, LogCap: spec.LogCap, OnExit: spec.OnExit, OnStarted: spec.OnSpawn}
	if spec.VMDir != "" {
		opts.ExitFile = ExitFile(spec.VMDir)
	}
	return Spawn(path, args, opts)
}

// KillTimeout bounds how long Kill waits for a SIGKILLed VMM to be gone.
const KillTimeout = 10 * time.Second

// Kill SIGKILLs p, if it is still that process, and waits up to
// KillTimeout for it to be gone (system.Kill). Drivers use it to end a VMM
// whose launch failed.
func Kill(ctx context.Context, p Process) error {
	return system.Kill(ctx, p.PID, p.StartTime, KillTimeout)
}

// SocketMode is the mode of every VMM control socket: the VMM's owner
// alone (root, or a jailed VMM's user), whatever the umask was.
const SocketMode os.FileMode = 0o600

// WaitSocket waits until a unix socket at path accepts a connection, the
// process dies, or the timeout passes; then sets the socket's mode to
// SocketMode. (The daemon runs with umask 022, so the socket is never
// writable, hence connectable, by others in between.)
func WaitSocket(ctx context.Context, path string, p Process, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c.Close()
			if err := os.Chmod(path, SocketMode); err != nil {
				return fmt.Errorf("control socket %s: %w", path, err)
			}
			return nil
		}
		if !system.Alive(p.PID, p.StartTime) {
			return errors.New("the VMM process exited before its control socket was ready")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("control socket %s not ready after %s: %w", path, timeout, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
