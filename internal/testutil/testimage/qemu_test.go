package testimage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/testutil"
)

// requireVMTests gates on testutil.RequireVMs (skip without the opt-in,
// fail when the host is not ready), then checks what Build needs and that
// the cache dir (BANGER_TEST_CACHE, default DefaultCacheDir) is writable.
func requireVMTests(tb testing.TB) string {
	tb.Helper()
	testutil.RequireVMs(tb)
	var problems []string
	if err := CheckHost(); err != nil {
		problems = append(problems, err.Error())
	}
	cache := os.Getenv("BANGER_TEST_CACHE")
	if cache == "" {
		cache = DefaultCacheDir
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		problems = append(problems, fmt.Sprintf("cache dir: %v (hint: run as root or set BANGER_TEST_CACHE)", err))
	} else if f, err := os.CreateTemp(cache, ".probe-"); err != nil {
		problems = append(problems, fmt.Sprintf("cache dir %s not writable: %v (hint: run as root or set BANGER_TEST_CACHE)", cache, err))
	} else {
		f.Close()
		os.Remove(f.Name())
	}
	if len(problems) > 0 {
		tb.Fatalf("BANGER_VM_TESTS=1 but this host cannot run VM tests:\n%s", strings.Join(problems, "\n"))
	}
	return cache
}

func buildImage(tb testing.TB) Image {
	tb.Helper()
	cache := requireVMTests(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := Build(ctx, cache)
	if err != nil {
		tb.Fatalf("build test image: %v", err)
	}
	tb.Logf("image (%.1fs): kernel %s (%s), initrd %s, rootfs %s",
		time.Since(start).Seconds(), img.Kernel, img.KernelVersion, img.Initrd, img.Rootfs)
	return img
}

// copyFile copies a disk image (sparse holes become zeros written: 64 MiB is cheap).
func copyFile(tb testing.TB, src, dst string) {
	tb.Helper()
	in, err := os.Open(src)
	if err != nil {
		tb.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		tb.Fatal(err)
	}
	if err := out.Close(); err != nil {
		tb.Fatal(err)
	}
}

type vmConfig struct {
	Machine string // q35, pc, microvm
	CPU     string // max, qemu64
	Paused  bool   // start with -S, then QMP cont
	Disk    string
}

type vm struct {
	tb      testing.TB
	cmd     *exec.Cmd
	logPath string
	qmp     *qmpConn
	started time.Time
	done    chan struct{}
	waitErr error
}

func qemuArgs(img Image, c vmConfig, dir string) []string {
	blk := "virtio-blk-pci"
	if c.Machine == "microvm" {
		blk = "virtio-blk-device"
	}
	args := []string{
		"-machine", c.Machine, "-accel", "tcg", "-cpu", c.CPU, "-smp", "1", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-qmp", "unix:" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off",
		"-chardev", "file,id=con,path=" + filepath.Join(dir, "console.log") + ",append=on",
		"-serial", "chardev:con",
		"-kernel", img.Kernel, "-initrd", img.Initrd,
		"-append", "console=ttyS0 root=/dev/vda rw panic=-1",
		"-drive", "file=" + c.Disk + ",if=none,id=root,format=raw",
		"-device", blk + ",drive=root",
	}
	if c.Paused {
		args = append(args, "-S")
	}
	return args
}

// startVM starts QEMU; t.Cleanup kills it if it is still running.
func startVM(tb testing.TB, img Image, c vmConfig) *vm {
	tb.Helper()
	dir, err := os.MkdirTemp("", "banger-vm-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	v := &vm{tb: tb, logPath: filepath.Join(dir, "console.log"), done: make(chan struct{})}
	v.cmd = exec.Command("qemu-system-x86_64", qemuArgs(img, c, dir)...)
	var stderr bytes.Buffer
	v.cmd.Stdout, v.cmd.Stderr = &stderr, &stderr
	// Die with the test binary, whatever happens to it.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		tb.Fatalf("start qemu: %v", err)
	}
	go func() { v.waitErr = v.cmd.Wait(); close(v.done) }()
	tb.Cleanup(func() {
		if v.qmp != nil {
			v.qmp.Close()
		}
		select {
		case <-v.done:
		default:
			v.cmd.Process.Kill()
			<-v.done
		}
		if tb.Failed() {
			con, _ := os.ReadFile(v.logPath)
			tb.Logf("qemu stderr:\n%s\nconsole:\n%s", stderr.String(), con)
		}
	})
	v.qmp, err = dialQMP(filepath.Join(dir, "qmp.sock"), 10*time.Second, v.done)
	if err != nil {
		tb.Fatalf("qmp: %v", err)
	}
	if c.Paused {
		if _, err := v.qmp.Execute("cont", nil); err != nil {
			tb.Fatalf("qmp cont: %v", err)
		}
	}
	return v
}

// waitConsole polls the console log until it contains s, QEMU exits or timeout.
func (v *vm) waitConsole(s string, timeout time.Duration) (time.Duration, error) {
	deadline := time.After(timeout)
	for {
		if b, err := os.ReadFile(v.logPath); err == nil && bytes.Contains(b, []byte(s)) {
			return time.Since(v.started), nil
		}
		select {
		case <-v.done:
			if b, _ := os.ReadFile(v.logPath); bytes.Contains(b, []byte(s)) {
				return time.Since(v.started), nil
			}
			return 0, fmt.Errorf("qemu exited (%v) before %q appeared", v.waitErr, s)
		case <-deadline:
			return 0, fmt.Errorf("%q did not appear within %s", s, timeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (v *vm) console() string {
	b, _ := os.ReadFile(v.logPath)
	return string(b)
}

func (v *vm) sendCtrlAltDel() error {
	_, err := v.qmp.Execute("send-key", map[string]any{"keys": []map[string]string{
		{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "delete"},
	}})
	return err
}

// waitExit waits for QEMU to exit on its own and returns its exit error.
func (v *vm) waitExit(timeout time.Duration) error {
	select {
	case <-v.done:
		return v.waitErr
	case <-time.After(timeout):
		return fmt.Errorf("qemu still running %s later", timeout)
	}
}

// qmpConn is the smallest QMP client that serves these tests.
type qmpConn struct {
	conn net.Conn
	dec  *json.Decoder
}

func dialQMP(path string, timeout time.Duration, exited <-chan struct{}) (*qmpConn, error) {
	deadline := time.Now().Add(timeout)
	var conn net.Conn
	for {
		var err error
		conn, err = net.Dial("unix", path)
		if err == nil {
			break
		}
		select {
		case <-exited:
			return nil, errors.New("qemu exited before its QMP socket appeared")
		default:
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
	q := &qmpConn{conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	conn.SetDeadline(time.Now().Add(timeout))
	var greeting map[string]json.RawMessage
	if err := q.dec.Decode(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, ok := greeting["QMP"]; !ok {
		conn.Close()
		return nil, fmt.Errorf("unexpected greeting %v", greeting)
	}
	if _, err := q.Execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// Execute runs one command, skipping asynchronous events.
func (q *qmpConn) Execute(cmd string, args any) (json.RawMessage, error) {
	q.conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	if err := json.NewEncoder(q.conn).Encode(req); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := q.dec.Decode(&resp); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		default:
			return resp.Return, nil
		}
	}
}

func (q *qmpConn) Close() error { return q.conn.Close() }
