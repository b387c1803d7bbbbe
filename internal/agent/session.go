package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// waitDelay bounds how long a finished command's output is still read: a
// background process keeping stdout open must not keep the session open.
const waitDelay = 2 * time.Second

// session is one SSH session channel: env and pty-req come first, then
// exactly one of exec, shell or subsystem; window-change and signal after.
type session struct {
	s   *Server
	ch  ssh.Channel
	env map[string]string
	pty *ptyRequest

	mu      sync.Mutex
	started bool
	proc    *os.Process
	ptmx    *os.File
}

type ptyRequest struct {
	Term       string
	Cols, Rows uint32
	W, H       uint32
	Modes      string
}

type windowChange struct {
	Cols, Rows uint32
	W, H       uint32
}

func (s *Server) session(ctx context.Context, ch ssh.Channel, reqs <-chan *ssh.Request) {
	ss := &session{s: s, ch: ch, env: map[string]string{}}
	defer func() {
		ch.Close()
		// Requests arriving after the end are answered "no" rather than
		// left to fill the channel's queue.
		go ssh.DiscardRequests(reqs)
	}()
	// done is closed by the goroutine serving exec, shell or subsystem
	// once it has reported the exit.
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		var r *ssh.Request
		select {
		case r = <-reqs:
		case <-done:
			return
		}
		if r == nil {
			// The host closed the channel or the connection is gone: a
			// command still running has nobody to report to.
			ss.kill()
			return
		}
		ok := ss.request(ctx, r, &wg, done)
		if r.WantReply {
			_ = r.Reply(ok, nil)
		}
	}
}

func (ss *session) request(ctx context.Context, r *ssh.Request, wg *sync.WaitGroup, done chan struct{}) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch r.Type {
	case "env":
		var kv struct{ Name, Value string }
		if ss.started || ssh.Unmarshal(r.Payload, &kv) != nil || kv.Name == "" || strings.ContainsAny(kv.Name, "=\x00") {
			return false
		}
		ss.env[kv.Name] = kv.Value
		return true
	case "pty-req":
		var p ptyRequest
		if ss.started || ssh.Unmarshal(r.Payload, &p) != nil {
			return false
		}
		ss.pty = &p
		return true
	case "window-change":
		var w windowChange
		if ssh.Unmarshal(r.Payload, &w) != nil {
			return false
		}
		if ss.pty != nil {
			ss.pty.Cols, ss.pty.Rows, ss.pty.W, ss.pty.H = w.Cols, w.Rows, w.W, w.H
		}
		if ss.ptmx != nil {
			_ = setWinsize(ss.ptmx, w.Cols, w.Rows, w.W, w.H)
		}
		return true
	case "signal":
		var sig struct{ Signal string }
		if ssh.Unmarshal(r.Payload, &sig) != nil || ss.proc == nil {
			return false
		}
		n := unix.SignalNum("SIG" + sig.Signal)
		if n == 0 {
			return false
		}
		return syscall.Kill(-ss.proc.Pid, n) == nil
	case "exec", "shell", "subsystem":
		if ss.started {
			return false
		}
		var cmd *exec.Cmd
		switch r.Type {
		case "subsystem":
			var sub struct{ Name string }
			if ssh.Unmarshal(r.Payload, &sub) != nil || sub.Name != "sftp" {
				return false
			}
			ss.started = true
			wg.Go(func() {
				ss.exit(ss.s.serveSFTP(ss.ch), "")
				close(done)
			})
			return true
		case "exec":
			var c struct{ Command string }
			if ssh.Unmarshal(r.Payload, &c) != nil {
				return false
			}
			var req ExecRequest
			var err error
			if len(c.Command) > maxExecPayload {
				err = fmt.Errorf("exec request of %d bytes, at most %d accepted", len(c.Command), maxExecPayload)
			} else if err = json.Unmarshal([]byte(c.Command), &req); err != nil {
				err = fmt.Errorf("exec request is not banger's JSON (hint: the guest agent runs argv, not shell command lines): %w", err)
			} else if len(req.Argv) == 0 || req.Argv[0] == "" {
				err = errors.New("exec request without a command")
			}
			if err == nil {
				for k, v := range ss.env {
					if req.Env == nil {
						req.Env = map[string]string{}
					}
					if _, set := req.Env[k]; !set {
						req.Env[k] = v
					}
				}
				cmd, err = ss.command(req, false)
			}
			if err != nil {
				return ss.refuse(err, wg, done)
			}
		case "shell":
			req := ExecRequest{User: ss.env[EnvUser], Env: map[string]string{}}
			for k, v := range ss.env {
				if k != EnvUser {
					req.Env[k] = v
				}
			}
			c, err := ss.command(req, true)
			if err != nil {
				return ss.refuse(err, wg, done)
			}
			cmd = c
		}
		ss.started = true
		if err := ss.start(ctx, cmd, wg, done); err != nil {
			ss.started = false
			return ss.refuse(err, wg, done)
		}
		return true
	}
	return false
}

// refuse accepts the request but reports err on stderr with exit status
// 127 (as a shell does for a command it cannot run): the host then sees
// why, instead of a bare "request failed".
func (ss *session) refuse(err error, wg *sync.WaitGroup, done chan struct{}) bool {
	ss.started = true
	wg.Go(func() {
		fmt.Fprintf(ss.ch.Stderr(), "banger-agent: %v\n", err)
		ss.exit(127, "")
		close(done)
	})
	return true
}

// exit reports the command's end to the host: exit-status, or exit-signal
// for a command killed by a signal.
func (ss *session) exit(code uint32, signal string) {
	_ = ss.ch.CloseWrite()
	if signal != "" {
		_, _ = ss.ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Msg, Lang  string
		}{Signal: signal}))
		return
	}
	_, _ = ss.ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{code}))
}

func (ss *session) kill() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.proc != nil {
		_ = syscall.Kill(-ss.proc.Pid, syscall.SIGKILL)
	}
}

// account is a guest user as the agent runs commands for it.
type account struct {
	name       string
	uid, gid   uint32
	groups     []uint32
	home       string
	shell      string
	isRootUser bool
}

// lookupAccount finds name (default root) in the guest's user database.
func lookupAccount(name string) (account, error) {
	if name == "" {
		name = "root"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return account{}, fmt.Errorf("user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return account{}, fmt.Errorf("user %q: %w", name, err)
	}
	a := account{name: name, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir, shell: loginShell(name), isRootUser: uid == 0}
	gids, err := u.GroupIds()
	if err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				a.groups = append(a.groups, uint32(n))
			}
		}
	}
	return a, nil
}

// loginShell is name's shell from /etc/passwd (os/user does not return
// it), /bin/sh when unknown.
func loginShell(name string) string {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return "/bin/sh"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) == 7 && fields[0] == name && fields[6] != "" {
			return fields[6]
		}
	}
	return "/bin/sh"
}

// command builds the process for req; shell runs the user's login shell.
func (ss *session) command(req ExecRequest, shell bool) (*exec.Cmd, error) {
	acct, err := lookupAccount(req.User)
	if err != nil {
		return nil, err
	}
	env := map[string]string{
		"PATH":    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME":    acct.home,
		"USER":    acct.name,
		"LOGNAME": acct.name,
		"SHELL":   acct.shell,
	}
	if ss.pty != nil && ss.pty.Term != "" {
		env["TERM"] = ss.pty.Term
	}
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("bad environment variable name %q", k)
		}
		env[k] = v
	}
	var cmd *exec.Cmd
	if shell {
		cmd = exec.Command(acct.shell)
		// A leading dash in argv[0] makes it a login shell.
		cmd.Args = []string{"-" + baseName(acct.shell)}
	} else {
		path := req.Argv[0]
		if !strings.Contains(path, "/") {
			// Looked up in the command's PATH, not the agent's.
			if p, ok := lookPath(path, env["PATH"]); ok {
				path = p
			} else {
				return nil, fmt.Errorf("%q: command not found", req.Argv[0])
			}
		}
		cmd = exec.Command(path)
		cmd.Args = req.Argv
	}
	cmd.Dir = req.Dir
	if cmd.Dir != "" {
		if fi, err := os.Stat(cmd.Dir); err != nil {
			return nil, fmt.Errorf("working directory: %w", err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("working directory %q is not a directory", cmd.Dir)
		}
	} else {
		cmd.Dir = acct.home
		if fi, err := os.Stat(cmd.Dir); err != nil || !fi.IsDir() {
			cmd.Dir = "/"
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !acct.isRootUser || os.Getuid() != 0 {
		if uint32(os.Getuid()) != acct.uid {
			cmd.SysProcAttr.Credential = &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: acct.groups}
		}
	}
	cmd.WaitDelay = waitDelay
	return cmd, nil
}

func baseName(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

func lookPath(name, path string) (string, bool) {
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			continue
		}
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// start runs cmd with the session's streams, or its TTY, and reports its
// end. Called with ss.mu held.
func (ss *session) start(ctx context.Context, cmd *exec.Cmd, wg *sync.WaitGroup, done chan struct{}) error {
	var copies sync.WaitGroup
	if ss.pty != nil {
		ptmx, tty, err := openPTY()
		if err != nil {
			return err
		}
		_ = setWinsize(ptmx, ss.pty.Cols, ss.pty.Rows, ss.pty.W, ss.pty.H)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setpgid = false
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		err = cmd.Start()
		tty.Close()
		if err != nil {
			ptmx.Close()
			return err
		}
		ss.ptmx = ptmx
		go func() { _, _ = io.Copy(ptmx, ss.ch) }()
		copies.Go(func() { _, _ = io.Copy(ss.ch, ptmx) }) // ends with EIO once no one holds the TTY
	} else {
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = ss.ch, ss.ch.Stderr()
		if err := cmd.Start(); err != nil {
			return err
		}
		go func() {
			_, _ = io.Copy(stdin, ss.ch)
			stdin.Close()
		}()
	}
	ss.proc = cmd.Process
	stop := context.AfterFunc(ctx, ss.kill)
	wg.Go(func() {
		defer close(done)
		defer stop()
		_ = cmd.Wait() // its outcome is in cmd.ProcessState
		if ss.ptmx != nil {
			// Output still in the TTY is read until its last holder is gone
			// (EIO), or for waitDelay at most.
			t := time.AfterFunc(waitDelay, func() { ss.ptmx.Close() })
			copies.Wait()
			t.Stop()
			ss.ptmx.Close()
		}
		code, signal := exitOf(cmd)
		ss.exit(code, signal)
	})
	return nil
}

func exitOf(cmd *exec.Cmd) (uint32, string) {
	if cmd.ProcessState == nil {
		return 255, ""
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return 0, strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
	}
	if c := cmd.ProcessState.ExitCode(); c >= 0 {
		return uint32(c), ""
	}
	return 255, ""
}

// openPTY opens a new pseudo-terminal pair.
func openPTY() (ptmx, tty *os.File, err error) {
	ptmx, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	rc, err := ptmx.SyscallConn()
	if err != nil {
		ptmx.Close()
		return nil, nil, err
	}
	var n uint32
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		if ioErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ioErr != nil {
			return
		}
		n, ioErr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN)
	}); err != nil || ioErr != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("open pty: %w", errors.Join(err, ioErr))
	}
	tty, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	return ptmx, tty, nil
}

func setWinsize(f *os.File, cols, rows, w, h uint32) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{
			Row: uint16(rows), Col: uint16(cols), Xpixel: uint16(w), Ypixel: uint16(h),
		})
	})
	return errors.Join(err, ioErr)
}
