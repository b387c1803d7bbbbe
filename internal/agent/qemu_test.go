package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// guestInittab is the test guest's inittab plus what the agent needs: the
// virtio-serial driver (a module in Debian's kernel, loaded by no one else
// in this busybox guest), devpts for TTYs, and the agent itself, respawned.
const guestInittab = `::sysinit:/etc/init.d/rcS
::sysinit:/sbin/insmod /lib/virtio_console.ko
::sysinit:/bin/mkdir -p /dev/pts
::sysinit:/bin/mount -t devpts devpts /dev/pts
::respawn:/sbin/banger-agent -debug
::ctrlaltdel:/etc/init.d/ctrlaltdel
::shutdown:/bin/sync
`

const guestPasswd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
const guestGroup = "root:x:0:\nnogroup:x:65534:\n"

// buildAgent builds cmd/banger-agent static into dir.
func buildAgent(t *testing.T, dir string) string {
	t.Helper()
	// go test puts its own GOROOT/bin first in the test's PATH.
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build banger-agent: %v", err)
	}
	out := filepath.Join(dir, "banger-agent")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/banger-vm/banger/cmd/banger-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build banger-agent: %v\n%s", err, b)
	}
	return out
}

// agentDisk copies the test image's root disk and installs the agent in it
// with debugfs.
func agentDisk(t *testing.T, img testimage.Image, dir string, agentArgs ...string) string {
	t.Helper()
	agentBin := buildAgent(t, dir)
	ko, _ := filepath.Glob(filepath.Join(filepath.Dir(img.Kernel), "lib/modules", img.KernelVersion, "kernel/drivers/char/virtio_console.ko"))
	if len(ko) != 1 {
		t.Fatalf("virtio_console.ko not found in the test kernel (%s)", filepath.Dir(img.Kernel))
	}
	disk := filepath.Join(dir, "root.ext4")
	src, err := os.Open(img.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(disk, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	inittab := strings.Replace(guestInittab, "/sbin/banger-agent -debug", strings.Join(append([]string{"/sbin/banger-agent", "-debug"}, agentArgs...), " "), 1)
	files := map[string]string{"inittab": inittab, "passwd": guestPasswd, "group": guestGroup}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := strings.Join([]string{
		"write " + agentBin + " /sbin/banger-agent",
		"sif /sbin/banger-agent mode 0100755",
		"mkdir /lib",
		"write " + ko[0] + " /lib/virtio_console.ko",
		"rm /etc/inittab", "write " + filepath.Join(dir, "inittab") + " /etc/inittab",
		"rm /etc/passwd", "write " + filepath.Join(dir, "passwd") + " /etc/passwd",
		"rm /etc/group", "write " + filepath.Join(dir, "group") + " /etc/group",
		"",
	}, "\n")
	cmd := exec.Command("debugfs", "-w", "-f", "-", disk)
	cmd.Stdin = strings.NewReader(script)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, b)
	}
	return disk
}

const guestMAC = "52:54:00:ba:4e:01"

// bootAgentGuest boots the test guest under QEMU with the agent's
// virtio-serial port and returns the port's socket and the QEMU process's
// end.
func bootAgentGuest(t *testing.T, agentArgs ...string) (sock string, exited <-chan error) {
	t.Helper()
	ctx := testCtx(t)
	img, err := testimage.Build(ctx, testimage.DefaultCacheDir)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disk := agentDisk(t, img, dir, agentArgs...)
	sock = filepath.Join(dir, "agent.sock")
	console := filepath.Join(dir, "console.log")
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "file,id=console,path=" + console,
		"-serial", "chardev:console",
		"-kernel", img.Kernel, "-initrd", img.Initrd,
		"-append", "console=ttyS0 root=/dev/vda rw panic=1",
		"-drive", "file=" + disk + ",if=none,id=root,format=raw",
		"-device", "virtio-blk-pci,drive=root",
		"-netdev", "user,id=net0,restrict=on",
		"-device", "virtio-net-pci,netdev=net0,mac=" + guestMAC,
	}
	args = append(args, QEMUArgs(sock)...)
	cmd := exec.Command("qemu-system-x86_64", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	exitedCh := make(chan struct{})
	go func() {
		done <- cmd.Wait()
		close(exitedCh)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exitedCh
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("qemu stderr:\n%s\nguest console:\n%s", stderr.String(), b)
		}
	})
	return sock, done
}

// TestQEMUGuest boots a real guest with the agent on a virtio-serial port
// and drives every request through it.
func TestQEMUGuest(t *testing.T) {
	testutil.RequireVMs(t)
	testutil.RequireTools(t, "debugfs")
	sock, exited := bootAgentGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	log := testLogger(t)
	dial := func(ctx context.Context) (*Client, error) { return DialSerial(ctx, log, sock) }

	start := time.Now()
	c, info, err := WaitReady(ctx, dial, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent ready %v after QEMU start; boot id %s", time.Since(start).Round(time.Millisecond), info.BootID)
	if info.BootID == "" || c.Version().Protocol != ProtocolVersion {
		t.Fatalf("ready %+v version %+v", info, c.Version())
	}

	// Exec: streams, exit codes, signals, user, TTY.
	st, out, errOut := run(t, c, ExecOptions{Argv: []string{"sh", "-c", "uname -r; echo oops >&2; exit 7"}})
	if st.Code != 7 || strings.TrimSpace(out) == "" || errOut != "oops\n" {
		t.Fatalf("exec: %+v %q %q", st, out, errOut)
	}
	if st, _, _ := run(t, c, ExecOptions{Argv: []string{"sh", "-c", "kill -KILL $$"}}); st.Signal != "KILL" {
		t.Fatalf("signal: %+v", st)
	}
	if st, out, _ := run(t, c, ExecOptions{Argv: []string{"id", "-u"}, User: "nobody"}); st.Code != 0 || out != "65534\n" {
		t.Fatalf("as nobody: %q %+v", out, st)
	}
	st, out, _ = run(t, c, ExecOptions{Argv: []string{"stty", "size"}, TTY: &TTY{Size: WindowSize{Cols: 77, Rows: 22}}})
	if st.Code != 0 || strings.TrimSpace(out) != "22 77" {
		t.Fatalf("tty: %q %+v", out, st)
	}
	const n = 10
	t0 := time.Now()
	for range n {
		if st, _, _ := run(t, c, ExecOptions{Argv: []string{"true"}}); st.Code != 0 {
			t.Fatal(st)
		}
	}
	t.Logf("exec true through the agent: %v each (mean of %d, TCG guest)", (time.Since(t0) / n).Round(time.Millisecond), n)

	// Copy round trip with checksums and modes.
	src, back := t.TempDir(), t.TempDir()
	tree(t, src)
	cctx, ccancel := context.WithTimeout(ctx, time.Minute)
	defer ccancel()
	t0 = time.Now()
	if err := c.CopyTo(cctx, src, "/root/tree"); err != nil {
		t.Fatal(err)
	}
	t.Logf("copy to the guest: %v", time.Since(t0))
	t0 = time.Now()
	if err := c.CopyFrom(cctx, "/root/tree", filepath.Join(back, "tree")); err != nil {
		t.Fatal(err)
	}
	t.Logf("copy from the guest: %v", time.Since(t0))
	sameTree(t, "guest round trip", snapshot(t, src), snapshot(t, filepath.Join(back, "tree")))

	// Clock and entropy.
	if err := c.SetClock(ctx, time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	if st, out, _ := run(t, c, ExecOptions{Argv: []string{"date", "-u", "+%Y-%m-%d"}}); st.Code != 0 || out != "2031-03-04\n" {
		t.Fatalf("guest date after SetClock: %q", out)
	}
	if err := c.AddEntropy(ctx, bytes.Repeat([]byte{1, 2, 3, 4}, 64)); err != nil {
		t.Fatal(err)
	}

	// The connection is reopened: the agent serves the next host.
	c.Close()
	if c, err = DialSerial(ctx, log, sock); err != nil {
		t.Fatalf("second connection: %v", err)
	}
	defer c.Close()

	// Identity, applied for real by HostSystem.
	keys, err := c.SetIdentity(ctx, Identity{
		Hostname:    "agent-fork",
		MachineID:   strings.Repeat("0f", 16),
		Network:     &NetworkIdentity{MAC: guestMAC, Address: mustPrefix("10.77.0.9/24"), Gateway: mustAddr("10.77.0.1")},
		DNS:         []netip.Addr{mustAddr("10.77.0.1")},
		NewHostKeys: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	st, out, _ = run(t, c, ExecOptions{Argv: []string{"sh", "-c", "hostname; cat /etc/machine-id; ip -4 addr show; ip route; cat /etc/resolv.conf; cat /etc/ssh/ssh_host_ed25519_key.pub; stat -c %a /etc/ssh/ssh_host_ed25519_key"}})
	for _, want := range []string{"agent-fork\n", strings.Repeat("0f", 16), "inet 10.77.0.9/24", "default via 10.77.0.1", "nameserver 10.77.0.1", "\n600\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest after identity lacks %q:\n%s", want, out)
		}
	}
	if len(keys) != 1 || !strings.Contains(out, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(keys[0])))) {
		t.Errorf("returned host key %v is not the guest's:\n%s", keys, out)
	}
	if info, err := c.Ready(ctx); err != nil || !info.Identity {
		t.Fatalf("ready after identity: %+v %v", info, err)
	}

	// The agent does not need the guest's network.
	st, _, errOut = run(t, c, ExecOptions{Argv: []string{"sh", "-c", "ip link set dev $(ip -o link | grep -i " + guestMAC + " | cut -d: -f2) down"}})
	if st.Code != 0 {
		t.Fatalf("network down: %+v %s", st, errOut)
	}
	if st, out, _ := run(t, c, ExecOptions{Argv: []string{"cat", "/sys/class/net/eth0/operstate"}}); st.Code != 0 || out != "down\n" {
		t.Fatalf("exec with the network down: %q %+v", out, st)
	}

	// Clean shutdown: QEMU exits.
	if err := c.Shutdown(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("qemu: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the guest did not power off")
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

// TestQEMUGuestOfAnotherProtocol: a real guest whose agent speaks another
// protocol version (an image of another banger) is refused at once with
// both versions named, never a hang or a retry until the deadline.
func TestQEMUGuestOfAnotherProtocol(t *testing.T) {
	testutil.RequireVMs(t)
	testutil.RequireTools(t, "debugfs")
	sock, _ := bootAgentGuest(t, "-claim-protocol", strconv.Itoa(ProtocolVersion+1))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	log := testLogger(t)
	dial := func(ctx context.Context) (*Client, error) { return DialSerial(ctx, log, sock) }
	_, _, err := WaitReady(ctx, dial, 30*time.Second)
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Agent != ProtocolVersion+1 || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("a guest agent of protocol %d: %v", ProtocolVersion+1, err)
	}
	if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("protocol %d", ProtocolVersion+1)) || !strings.Contains(msg, fmt.Sprintf("speaks %d", ProtocolVersion)) {
		t.Fatalf("the error does not name both versions: %s", msg)
	}
	if ctx.Err() != nil {
		t.Fatal("the refusal waited for the deadline")
	}
}
