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

	"github.com/banger-vm/banger/internal/system"
)

// Spawn starts a VMM process in its own session, so that it outlives the
// daemon, with stdin from /dev/null and stdout and stderr appended to
// logPath. The daemon reaps the process if it exits while the daemon runs;
// after a daemon restart, init does.
func Spawn(path string, args []string, logPath string) (Process, error) {
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return Process{}, fmt.Errorf("open vm log: %w", err)
	}
	defer log.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return Process{}, err
	}
	defer devnull.Close()

	cmd := exec.Command(path, args...)
	cmd.Stdin = devnull
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("start %s: %w", path, err)
	}
	pid := cmd.Process.Pid
	st, statErr := system.ReadProcStat(pid)
	go func() { _ = cmd.Wait() }() // reap; the exit status is in the VM log
	if statErr != nil {
		// It exited (and may be reaped) before we could read it.
		return Process{}, fmt.Errorf("%s exited immediately", path)
	}
	return Process{PID: pid, StartTime: st.StartTime}, nil
}

// SpawnFor spawns the VMM of spec (see Spawn) and reports it through
// spec.OnSpawn; if that fails, the process is killed and the error returned.
func SpawnFor(spec Spec, path string, args []string) (Process, error) {
	p, err := Spawn(path, args, spec.LogPath)
	if err != nil || spec.OnSpawn == nil {
		return p, err
	}
	if err := spec.OnSpawn(p); err != nil {
		return Process{}, errors.Join(fmt.Errorf("record the new vmm: %w", err), Kill(context.Background(), p))
	}
	return p, nil
}

// KillTimeout bounds how long Kill waits for a SIGKILLed VMM to be gone.
const KillTimeout = 10 * time.Second

// Kill SIGKILLs p, if it is still that process, and waits up to
// KillTimeout for it to be gone (system.Kill). Drivers use it to end a VMM
// whose launch failed.
func Kill(ctx context.Context, p Process) error {
	return system.Kill(ctx, p.PID, p.StartTime, KillTimeout)
}

// WaitSocket waits until a unix socket at path accepts a connection, the
// process dies, or the timeout passes.
func WaitSocket(ctx context.Context, path string, p Process, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c.Close()
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
