package logcap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
)

// TestMain lets the test binary act as `banger _logpipe` when
// SpawnForwarder re-executes it (/proc/self/exe).
func TestMain(m *testing.M) {
	if len(os.Args) == 5 && os.Args[1] == ForwarderCommand && os.Args[2] == "--cap" {
		limit, err := strconv.ParseInt(os.Args[3], 10, 64)
		if err == nil {
			err = Forward(os.Stdin, os.Args[4], limit, os.NewFile(ReadyFD, "ready"))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// logSize is the disk the log takes: the file and its rotated half.
func logSize(t *testing.T, path string) int64 {
	t.Helper()
	var total int64
	for _, p := range []string{path, Rotated(path)} {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	return total
}

// readAll reads the log as `vm logs` does.
func readAll(t *testing.T, path string) string {
	t.Helper()
	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkTail asserts the log ends with lines first..last, in order, each whole.
func checkTail(t *testing.T, text string, last int) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 100 {
		t.Fatalf("only %d lines kept", len(lines))
	}
	// The first line may be cut by a rotation; every other is whole and in order.
	for i, l := range lines[1:] {
		want := fmt.Sprintf("line %08d %s", last-len(lines)+2+i, strings.Repeat("x", 60))
		if l != want {
			t.Fatalf("line %d of the kept log is %q, want %q", i+1, l, want)
		}
	}
}

func TestWriterKeepsLatestWithinCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	const limit = 64 << 10
	w, err := Open(path, limit)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000 // about 1.4 MB through a 64 KiB cap
	for i := 0; i < n; i++ {
		if _, err := fmt.Fprintf(w, "line %08d %s\n", i, strings.Repeat("x", 60)); err != nil {
			t.Fatal(err)
		}
		if s := logSize(t, path); i%1000 == 0 && s > limit {
			t.Fatalf("after %d lines the log takes %d bytes, cap %d", i, s, limit)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if s := logSize(t, path); s > limit || s < limit/2 {
		t.Fatalf("log takes %d bytes, want between %d and the cap %d", s, limit/2, limit)
	}
	checkTail(t, readAll(t, path), n-1)
}

func TestWriterReopensWithinCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "daemon.log")
	const limit = 8 << 10
	for round := 0; round < 5; round++ {
		w, err := Open(path, limit)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 200; i++ {
			if _, err := fmt.Fprintf(w, "round %d line %d\n", round, i); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if s := logSize(t, path); s > limit {
			t.Fatalf("round %d: %d bytes, cap %d", round, s, limit)
		}
	}
	if !strings.HasSuffix(readAll(t, path), "round 4 line 199\n") {
		t.Fatal("the last line is not at the end of the log")
	}
}

func TestWriteLargerThanHalfKeepsItsEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	w, err := Open(path, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	big := bytes.Repeat([]byte("a"), 100<<10)
	big = append(big, "THE END\n"...)
	if n, err := w.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if s := logSize(t, path); s > 8<<10 {
		t.Fatalf("%d bytes, cap %d", s, 8<<10)
	}
	if !strings.HasSuffix(readAll(t, path), "aaaaTHE END\n") {
		t.Fatal("the end of a large write was not kept")
	}
}

func TestModesIgnoreUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "vm.log")
	w, err := Open(path, 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2000; i++ {
		if _, err := fmt.Fprintf(w, "line %d\n", i); err != nil { // rotates several times
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, Rotated(path)} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != Mode {
			t.Fatalf("%s has mode %04o under umask 000, want %04o", p, st.Mode().Perm(), Mode)
		}
	}
}

// waitGone waits until pid no longer exists (SpawnForwarder reaps it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 3000; i++ {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("forwarder %d still runs 30 s after its pipe closed", pid)
}

func TestForwarderFloodStaysWithinCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	const limit = 256 << 10
	wr, pid, err := SpawnForwarder(ForwarderConfig{Path: path, Cap: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) }) // ESRCH once it has exited
	bw := bufio.NewWriterSize(wr, 64<<10)
	const n = 300000 // 21.6 MB
	var written int64
	for i := 0; i < n; i++ {
		m, err := fmt.Fprintf(bw, "line %08d %s\n", i, strings.Repeat("x", 60))
		if err != nil {
			t.Fatal(err)
		}
		written += int64(m)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	wr.Close() // the VMM exits
	waitGone(t, pid)
	s := logSize(t, path)
	t.Logf("flood: %d bytes written through the forwarder, log holds %d bytes, cap %d", written, s, limit)
	if s > limit {
		t.Fatalf("log takes %d bytes, cap %d", s, limit)
	}
	checkTail(t, readAll(t, path), n-1)
}

func TestForwarderExitsWhenTheWriterCloses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	wr, pid, err := SpawnForwarder(ForwarderConfig{Path: path, Cap: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) }) // ESRCH once it has exited
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("forwarder not running after spawn")
	}
	// The forwarder is in its own session: it outlives the daemon.
	sid, err := unix.Getsid(pid)
	if err != nil || sid != pid {
		t.Fatalf("forwarder's session %d (%v), want its own (%d)", sid, err, pid)
	}
	if _, err := fmt.Fprintln(wr, "last words"); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	waitGone(t, pid)
	if got := readAll(t, path); got != "last words\n" {
		t.Fatalf("log %q", got)
	}
}

func TestSpawnForwarderUnwritableLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent", "vm.log")
	_, _, err := SpawnForwarder(ForwarderConfig{Path: path, Cap: 64 << 10})
	if err == nil {
		t.Fatal("a log in a missing dir was accepted")
	}
	if !strings.Contains(err.Error(), path) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("error %q does not name the log and its cause (ENOENT)", err)
	}
	if pids := forwardersOf(t, path); len(pids) > 0 {
		t.Fatalf("forwarders %v still run after a failed spawn", pids)
	}
}

// forwardersOf lists the forwarder processes writing path (their command
// line names it), zombies included.
func forwardersOf(t *testing.T, path string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if len(args) > 1 && args[0] == "banger-logpipe" && args[len(args)-1] == path {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestSpawnForwarderFailsOnAFullDisk: a log that has no room for the VM's
// first output fails the spawn, as out_of_space naming the log, and leaves
// no forwarder; also when the log exists and its last block has room for
// a few more lines. Once space is back the spawn works and the log keeps
// what it had (the room is reserved past its end, not written).
func TestSpawnForwarderFailsOnAFullDisk(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Fatalf("mount a 1 MiB tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	fresh, earlier := filepath.Join(dir, "fresh.log"), filepath.Join(dir, "earlier.log")
	if err := os.WriteFile(earlier, []byte("earlier boot\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	fill(t, filler)
	for _, path := range []string{fresh, earlier} {
		_, pid, err := SpawnForwarder(ForwarderConfig{Path: path, Cap: 16 << 20})
		if err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("%s: spawn on a full disk succeeded", path)
		}
		t.Logf("full disk: %v", err)
		if errdefs.ClassOf(err) != errdefs.ClassOutOfSpace || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), path) {
			t.Fatalf("error %q (class %s): want out_of_space naming %s", err, errdefs.ClassOf(err), path)
		}
		if pids := forwardersOf(t, path); len(pids) > 0 {
			t.Fatalf("forwarders %v still run after a failed spawn", pids)
		}
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	wr, pid, err := SpawnForwarder(ForwarderConfig{Path: earlier, Cap: 16 << 20})
	if err != nil {
		t.Fatalf("spawn once space is back: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if _, err := fmt.Fprintln(wr, "next boot"); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	waitGone(t, pid)
	if got := readAll(t, earlier); got != "earlier boot\nnext boot\n" {
		t.Fatalf("log %q", got)
	}
}

// TestForwarderFullDiskDropsWithoutBlocking floods a forwarder whose log is
// on a full tmpfs: the writer is never blocked, the lost bytes are
// reported in the log once space comes back.
func TestForwarderFullDiskDropsWithoutBlocking(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Fatalf("mount a 1 MiB tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "vm.log")
	// The log fits in the cap but not on the disk.
	wr, pid, err := SpawnForwarder(ForwarderConfig{Path: path, Cap: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) }) // ESRCH once it has exited
	filler := filepath.Join(dir, "filler")
	fill(t, filler)

	done := make(chan int64, 1)
	go func() {
		var written int64
		line := []byte(strings.Repeat("y", 99) + "\n")
		for i := 0; i < 100000; i++ { // 10 MB onto a full 1 MiB disk
			m, err := wr.Write(line)
			written += int64(m)
			if err != nil {
				break
			}
		}
		done <- written
	}()
	select {
	case written := <-done:
		t.Logf("full disk: %d bytes written through the forwarder without blocking", written)
		if written != 100000*100 {
			t.Fatalf("only %d bytes went through", written)
		}
	case <-time.After(120 * time.Second):
		t.Fatal("the writer is blocked: the forwarder stopped reading on a full disk")
	}
	// Let the forwarder drain its pipe onto the full disk before freeing it.
	for i := 0; ; i++ {
		queued, err := unix.IoctlGetInt(int(wr.Fd()), unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if queued == 0 {
			break
		}
		if i == 3000 {
			t.Fatalf("the forwarder left %d bytes in its pipe for 30 s", queued)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintln(wr, "space is back"); err != nil {
		t.Fatal(err)
	}
	wr.Close()
	waitGone(t, pid)
	got := readAll(t, path)
	marker := strings.Index(got, "bytes of output dropped: no space to write them]\n")
	if marker < 0 || !strings.HasSuffix(got, "\nspace is back\n") {
		t.Fatalf("no drop marker, or the line written after space came back is missing; log ends %q", tail(got, 300))
	}
	if len(got) > 200<<10 {
		t.Fatalf("the log holds %d bytes: writes on the full disk were not dropped", len(got))
	}
}

// fill writes path until the filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

func TestReaderFollowsRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	w, err := Open(path, 8<<10) // 4 KiB halves
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := fmt.Fprintln(w, "first"); err != nil {
		t.Fatal(err)
	}
	r, err := OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got bytes.Buffer
	drain := func() {
		if _, err := io.Copy(&got, r); err != nil {
			t.Fatal(err)
		}
	}
	drain()
	// Rotate once (the reader is at the end of what became vm.log.1),
	// then write past it: a follower sees every line, in order.
	for i := 0; i < 100; i++ {
		if _, err := fmt.Fprintf(w, "line %02d %s\n", i, strings.Repeat("z", 50)); err != nil {
			t.Fatal(err)
		}
		if i%30 == 0 {
			drain()
		}
	}
	if _, err := fmt.Fprintln(w, "last"); err != nil {
		t.Fatal(err)
	}
	drain()
	lines := strings.Split(strings.TrimSuffix(got.String(), "\n"), "\n")
	if lines[0] != "first" || lines[len(lines)-1] != "last" || len(lines) != 102 {
		t.Fatalf("followed %d lines, first %q, last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	for i, l := range lines[1:101] {
		if !strings.HasPrefix(l, fmt.Sprintf("line %02d ", i)) {
			t.Fatalf("line %d is %q", i, l)
		}
	}
}

// TestForwarderAsAVMMsOutput wires a forwarder as vmm.Spawn will: a child
// process in its own session with the pipe as stdout and stderr, the
// parent's copy closed after the start.
func TestForwarderAsAVMMsOutput(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.log")
	const limit = 1 << 20
	out, pid, err := SpawnForwarder(ForwarderConfig{Path: path, Cap: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) }) // ESRCH once it has exited
	cmd := exec.Command("sh", "-c", "yes 'console output' | head -n 1000000; echo 'vmm exiting' >&2")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out.Close() // the VMM holds its own copy
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	if s := logSize(t, path); s > limit {
		t.Fatalf("log takes %d bytes, cap %d", s, limit)
	}
	if got := readAll(t, path); !strings.HasSuffix(got, "console output\nvmm exiting\n") {
		t.Fatalf("log ends %q", tail(got, 100))
	}
}
