// Package system holds small host helpers: process identity and liveness,
// signals, ids. It is not a junk drawer: anything that names a banger
// concept belongs with that concept.
package system

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ProcStat is what banger reads of /proc/PID/stat.
type ProcStat struct {
	State     byte   // R, S, D, Z, ...
	StartTime uint64 // field 22: clock ticks after boot
}

// ReadProcStat reads /proc/PID/stat. A missing process gives fs.ErrNotExist.
func ReadProcStat(pid int) (ProcStat, error) {
	if pid <= 0 {
		return ProcStat{}, fmt.Errorf("invalid pid %d", pid)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	// comm (field 2) may hold spaces and parentheses: split after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ProcStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+2:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return ProcStat{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	st, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat start time: %w", pid, err)
	}
	return ProcStat{State: fields[0][0], StartTime: st}, nil
}

// Alive reports whether pid is a live (not zombie) process whose start time
// is startTime. startTime 0 skips the identity check.
func Alive(pid int, startTime uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := ReadProcStat(pid)
	if err != nil {
		return false
	}
	if st.State == 'Z' || st.State == 'X' {
		return false
	}
	return startTime == 0 || st.StartTime == startTime
}

// Signal sends sig to pid, but only if pid is still the process that started
// at startTime: a recycled pid is never signalled. A process that is already
// gone is not an error.
func Signal(pid int, startTime uint64, sig syscall.Signal) error {
	if !Alive(pid, startTime) {
		return nil
	}
	if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s to pid %d: %w", unix.SignalName(sig), pid, err)
	}
	return nil
}

// WaitExit polls until the process is gone, timeout passes or ctx ends. It
// reports whether the process exited. It works for processes that are not
// this one's children (re-adopted VMMs), which is why it polls.
func WaitExit(ctx context.Context, pid int, startTime uint64, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		if !Alive(pid, startTime) {
			return true
		}
		select {
		case <-ctx.Done():
			return !Alive(pid, startTime)
		case <-deadline.C:
			return !Alive(pid, startTime)
		case <-tick.C:
		}
	}
}

// ParseSignal accepts "TERM", "SIGTERM", "term" or a number, and rejects
// anything that is not a known signal.
func ParseSignal(s string) (syscall.Signal, error) {
	if s == "" {
		return syscall.SIGTERM, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || unix.SignalName(syscall.Signal(n)) == "" {
			return 0, fmt.Errorf("unknown signal %q (hint: use a name such as TERM, KILL, INT or HUP)", s)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig := unix.SignalNum(name)
	if sig == 0 {
		return 0, fmt.Errorf("unknown signal %q (hint: use a name such as TERM, KILL, INT or HUP)", s)
	}
	return sig, nil
}

// Kill sends SIGKILL to pid, if it is still the process that started at
// startTime (0 skips the check; see Signal), and waits up to timeout (or
// until ctx ends) for it to be gone. A process already gone, or a pid now
// held by another process, is not an error and is left alone. It is the
// one kill-and-wait every VMM path uses.
func Kill(ctx context.Context, pid int, startTime uint64, timeout time.Duration) error {
	if pid <= 0 {
		return nil
	}
	if err := Signal(pid, startTime, syscall.SIGKILL); err != nil {
		return err
	}
	if !WaitExit(ctx, pid, startTime, timeout) {
		return fmt.Errorf("pid %d still alive %s after SIGKILL", pid, timeout)
	}
	return nil
}
