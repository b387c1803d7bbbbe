package e2e

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/vishvananda/netns"
)

// BenchmarkStartToSSH measures a default VM from "start" to "SSH accepts
// connections" two ways, alternating, in one process: banger (`banger vm
// start`, the daemon, its steps, the QEMU driver) and a hand-written QEMU
// command on the same kernel, initramfs and root disk. It reports the
// medians and the ratio; the figures go to docs/benchmarks.md. Run it with
//
//	BANGER_VM_TESTS=1 go test ./test/e2e -run '^$' -bench StartToSSH -benchtime 7x -timeout 60m
func BenchmarkStartToSSH(b *testing.B) {
	requireE2E(b)
	d := startDaemon(b)
	d.buildDefaultImage()
	d.must("vm", "create", "bench", "--cpus", "2", "--memory", "1G", "--vmm", "qemu", "--disk-strategy", "sparse-copy")
	d.must("vm", "start", "--wait", "bench") // the first boot, not measured
	v := d.show("bench")
	d.must("vm", "stop", "bench")
	var im struct {
		KernelPath string `json:"kernel_path"`
		InitrdPath string `json:"initrd_path"`
		Cmdline    string `json:"cmdline"`
	}
	mustJSON(b, d.must("image", "show", "default", "-o", "json"), &im)

	// The hand-written VM gets its own tap on the daemon's bridge and the
	// same MAC, so the disk's network configuration matches.
	tap := "tap-bench0"
	for _, args := range [][]string{
		{"tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"},
		{"link", "set", tap, "master", "banger0", "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", d.netns}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	b.Cleanup(func() { exec.Command("ip", "-n", d.netns, "link", "del", tap).Run() })
	direct := func() (time.Duration, error) {
		dir := b.TempDir()
		qmpSock := filepath.Join(dir, "qmp.sock")
		args := []string{"netns", "exec", d.netns, "qemu-system-x86_64",
			"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1024",
			"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
			"-qmp", "unix:" + qmpSock + ",server=on,wait=off",
			"-serial", "file:" + filepath.Join(dir, "console.log"),
			"-kernel", im.KernelPath, "-initrd", im.InitrdPath,
			"-append", strings.TrimSpace("console=ttyS0 root=/dev/vda rw panic=1 " + im.Cmdline),
			"-drive", "file=" + filepath.Join(v.VMDir, "rootfs.ext4") + ",if=none,id=root,format=raw",
			"-device", "virtio-blk-pci,drive=root",
			"-netdev", "tap,id=n0,ifname=" + tap + ",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=n0,mac=" + macOf(v.ID),
			"-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng",
		}
		start := time.Now()
		cmd := exec.Command("ip", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		defer func() {
			powerOff(qmpSock)
			select {
			case <-exited:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}()
		if err := waitBanner(d.netns, v.GuestIP+":22", 5*time.Minute); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	viaBanger := func() (time.Duration, error) {
		start := time.Now()
		if _, err := d.run("vm", "start", "bench"); err != nil {
			return 0, err
		}
		if err := waitBanner(d.netns, v.GuestIP+":22", 5*time.Minute); err != nil {
			return 0, err
		}
		took := time.Since(start)
		_, err := d.run("vm", "stop", "bench")
		return took, err
	}

	// b.Loop runs this function once (the setup above happens once) and
	// iterates -benchtime times.
	var bangerTimes, directTimes []time.Duration
	for i := 0; b.Loop(); i++ {
		order := []func() (time.Duration, error){viaBanger, direct}
		if i%2 == 1 {
			order = []func() (time.Duration, error){direct, viaBanger}
		}
		for j, run := range order {
			took, err := run()
			if err != nil {
				b.Fatal(err)
			}
			if (i%2 == 0) == (j == 0) {
				bangerTimes = append(bangerTimes, took)
			} else {
				directTimes = append(directTimes, took)
			}
		}
	}
	bm, dm := median(bangerTimes), median(directTimes)
	b.ReportMetric(bm.Seconds(), "banger-s")
	b.ReportMetric(dm.Seconds(), "qemu-direct-s")
	b.ReportMetric(bm.Seconds()/dm.Seconds(), "ratio")
	b.Logf("start to ssh-ready over %d alternating pairs: banger median %s (%s..%s), hand-written qemu median %s (%s..%s), ratio %.2f",
		len(bangerTimes), bm, slices.Min(bangerTimes), slices.Max(bangerTimes), dm, slices.Min(directTimes), slices.Max(directTimes), bm.Seconds()/dm.Seconds())

	// Where the time goes inside the guest, on a banger boot.
	d.must("vm", "start", "--wait", "bench")
	b.Logf("systemd-analyze:\n%s", d.must("vm", "exec", "bench", "--", "sudo", "systemd-analyze"))
	b.Logf("systemd-analyze blame (top):\n%s", firstLines(d.must("vm", "exec", "bench", "--", "sudo", "systemd-analyze", "blame", "--no-pager"), 12))
	b.Logf("critical chain:\n%s", d.must("vm", "exec", "bench", "--", "sudo", "systemd-analyze", "critical-chain", "--no-pager"))
	d.must("vm", "delete", "bench")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// macOf is the MAC banger derives from a VM's ID (network.MACFor).
func macOf(id string) string {
	return fmt.Sprintf("06:fc:%s:%s:%s:%s", id[0:2], id[2:4], id[4:6], id[6:8])
}

// waitBanner polls addr from inside network namespace ns until an SSH
// server greets.
func waitBanner(ns, addr string, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // this thread dies with the goroutine: never returned to the pool
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 7)
				n, _ := c.Read(buf)
				c.Close()
				if string(buf[:n]) == "SSH-2.0" {
					errc <- nil
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		errc <- fmt.Errorf("no ssh banner from %s within %s", addr, timeout)
	}()
	return <-errc
}

// powerOff presses Ctrl-Alt-Del on a hand-started QEMU, as banger does.
func powerOff(sock string) {
	mon, err := qmp.NewSocketMonitor("unix", sock, 2*time.Second)
	if err != nil {
		return
	}
	defer mon.Disconnect()
	if mon.Connect() != nil {
		return
	}
	mon.Run([]byte(`{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},{"type":"qcode","data":"delete"}]}}`))
}
