package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/logcap"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// VMM death: every running VM has a watcher (watchVMM) blocked on a pidfd
// of its VMM process. When the process ends without banger asking (a guest
// power-off, a crash, a kill from outside), the watcher takes the VM's lock
// and, if the record still names that process as running, records the exit
// (model.Exit) and runs the runtime teardown, journalled as vm.exited. A
// stop, kill or delete tears down under the same lock first: the watcher
// then finds the VM no longer running on that process and does nothing.

// Stages of vm.exited.
const (
	StageVMMExited = "vmm.exited" // note: how the process ended
)

// exitWait bounds how long a watcher waits for the exit status (from the
// spawner, or the supervisor's exit file) once the pidfd said the process
// is gone.
const exitWait = time.Second

// logTailBytes is how much of the VM log's end an exit records.
const logTailBytes = 2 << 10

// exitBook hands the exit status the spawner's wait saw (vmm.Spec.OnExit)
// to the watcher of that pid.
type exitBook struct {
	mu sync.Mutex
	m  map[int]chan vmm.Exit
	// torn: pids a teardown is ending; their watchers stand down.
	torn map[procKey]bool
	// watched: processes that have a watcher (one each).
	watched map[procKey]bool
}

type procKey struct {
	pid int
	st  uint64
}

func newExitBook() *exitBook {
	return &exitBook{m: map[int]chan vmm.Exit{}, torn: map[procKey]bool{}, watched: map[procKey]bool{}}
}

// watch claims the watcher of a process; false: it has one.
func (b *exitBook) watch(k procKey) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.watched[k] {
		return false
	}
	b.watched[k] = true
	return true
}

func (b *exitBook) unwatch(k procKey) {
	b.mu.Lock()
	delete(b.watched, k)
	b.mu.Unlock()
}

// tearingDown marks pid as ended by banger: its watcher stands down
// without waiting for the VM's lock, which the teardown holds.
func (b *exitBook) tearingDown(pid int, st uint64) {
	if pid == 0 {
		return
	}
	b.mu.Lock()
	b.torn[procKey{pid, st}] = true
	b.mu.Unlock()
}

// torndown reports (and forgets) whether a teardown ended pid.
func (b *exitBook) torndown(pid int, st uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.torn[procKey{pid, st}]
	delete(b.torn, procKey{pid, st})
	return t
}

func (b *exitBook) ch(pid int) chan vmm.Exit {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.m[pid]
	if !ok {
		c = make(chan vmm.Exit, 1)
		b.m[pid] = c
	}
	return c
}

// put records pid's exit; it never blocks.
func (b *exitBook) put(e vmm.Exit) {
	select {
	case b.ch(e.PID) <- e:
	default:
	}
}

// exitFilePoll is how often take looks for the exit file.
const exitFilePoll = 20 * time.Millisecond

// take waits up to d for pid's exit status, from the spawner (OnExit) or,
// for a VMM this daemon did not spawn (re-adopted after a restart), from
// the exit file its supervisor writes in vmDir; then forgets pid. With
// vmDir empty it only drains what the spawner reported.
func (b *exitBook) take(pid int, vmDir string, st uint64, d time.Duration) (vmm.Exit, bool) {
	c := b.ch(pid)
	defer func() {
		b.mu.Lock()
		delete(b.m, pid)
		b.mu.Unlock()
	}()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(exitFilePoll)
	defer tick.Stop()
	for {
		if vmDir != "" {
			if e, ok := vmm.ReadExitFile(vmDir, pid, st); ok {
				return e, true
			}
		}
		select {
		case e := <-c:
			return e, true
		case <-deadline.C:
			return vmm.Exit{}, false
		case <-tick.C:
		}
	}
}

// watchVMM starts the watcher of v's recorded VMM process.
func (s *Service) watchVMM(v *model.VM) {
	id, pid, st, vmDir := v.ID, v.Runtime.PID, v.Runtime.PIDStartTime, v.VMDir
	if pid == 0 || !s.exits.watch(procKey{pid, st}) {
		return
	}
	go func() {
		defer s.exits.unwatch(procKey{pid, st})
		waitGone(pid, st)
		if s.exits.torndown(pid, st) {
			s.exits.take(pid, "", 0, 0)
			return
		}
		e, known := s.exits.take(pid, vmDir, st, exitWait)
		s.vmmExited(id, pid, st, e, known)
	}()
}

// waitGone returns when process pid (started at st) has exited.
func waitGone(pid int, st uint64) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // ESRCH: gone (and reaped) already
	}
	defer unix.Close(fd)
	// The pid may have been reused between the exit and the open: the
	// pidfd is of the process the record names only if it still runs
	// with the recorded start time.
	if !system.Alive(pid, st) {
		return
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, -1)
		if n > 0 || (err != nil && !errors.Is(err, unix.EINTR)) {
			return
		}
	}
}

// vmmExited records the exit of VM id's VMM process pid and tears down its
// runtime, unless a stop, kill, delete or start got there first.
func (s *Service) vmmExited(id string, pid int, st uint64, e vmm.Exit, known bool) {
	ctx, cancel := context.WithTimeout(store.Recovery(context.Background()), teardownTimeout)
	defer cancel()
	unlock, err := s.locks.lock(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	v, err := s.store.GetVM(ctx, id)
	if err != nil {
		return // deleted meanwhile
	}
	if v.State != model.StateRunning || v.Runtime.PID != pid || v.Runtime.PIDStartTime != st {
		return // a stop, kill or delete tore it down itself
	}
	ex := exitOf(e, known, v.LogPath)
	op := s.begin(ctx, "vm.exited", v)
	op.Note(StageVMMExited, fmt.Sprintf("vmm pid %d %s", pid, ex.Reason()))
	v.LastExit = ex
	reason := "vmm " + ex.Reason()
	state := model.StateStopped
	if !ex.Clean() {
		state = model.StateError
	}
	_ = op.finish(s.teardownAs(ctx, v, op, reason, state))
}

// exitOf is the record of a VMM's exit e (known: its status is known),
// with the end of its log.
func exitOf(e vmm.Exit, known bool, logPath string) *model.Exit {
	ex := &model.Exit{Known: known, Code: e.Code, At: e.At, LogTail: logTail(logPath)}
	if !known {
		ex.At = time.Now().UTC()
	}
	if e.Signal != 0 {
		ex.Signal = unix.SignalName(e.Signal)[len("SIG"):]
	}
	return ex
}

// logTail is the end of the VM log, whole lines only.
func logTail(path string) string {
	r, err := logcap.OpenReader(path)
	if err != nil {
		return ""
	}
	defer r.Close()
	b, _ := io.ReadAll(r) // capped by the log's own cap
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}
