package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// envInt is an integer from the environment, or def. The soak tests run
// short in the suite and long when measured (docs/reliability.md).
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// daemonFDs counts the daemon's open file descriptors.
func (d *daemon) daemonFDs() int {
	d.t.Helper()
	ents, err := os.ReadDir(filepath.Join("/proc", itoa(d.proc.cmd.Process.Pid), "fd"))
	if err != nil {
		d.t.Fatal(err)
	}
	return len(ents)
}

// TestCyclesLeakNothing runs create, start (to the guest's boot line),
// stop and delete BANGER_E2E_CYCLES times (default 5; 50 when measured)
// and checks the daemon's descriptors do not grow; the harness then checks
// that no process, dir, runtime file, tap, publish rule or host-key pin is
// left.
func TestCyclesLeakNothing(t *testing.T) {
	requireE2E(t)
	n := envInt(t, "BANGER_E2E_CYCLES", 5)
	d := startDaemon(t)
	d.importTestImage()
	var fds []int
	began := time.Now()
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("cyc%d", i)
		d.createVM(name, "--publish", "18080:80")
		d.must("vm", "start", name)
		d.waitLog(name, testimage.BootLine(1), 1, bootTimeout)
		d.must("vm", "stop", name)
		d.must("vm", "delete", name)
		if left := d.vmmProcesses(); len(left) > 0 {
			// The forwarder may still be draining: give it the harness's time.
			for j := 0; j < 50 && len(d.vmmProcesses()) > 0; j++ {
				time.Sleep(100 * time.Millisecond)
			}
			if left := d.vmmProcesses(); len(left) > 0 {
				t.Fatalf("cycle %d left processes:\n%s", i, strings.Join(left, "\n"))
			}
		}
		fds = append(fds, d.daemonFDs())
	}
	t.Logf("%d cycles in %s; daemon fds after each: %v", n, time.Since(began).Round(time.Second), fds)
	// The first cycle opens what the daemon keeps (database, netlink,
	// nftables); after it the count must not grow. One may still be
	// closing (a watcher's pidfd, a client connection): it must settle.
	for i := 0; i < 50 && d.daemonFDs() > fds[0]; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if now := d.daemonFDs(); now > fds[0] {
		t.Fatalf("daemon fds grew from %d to %d over %d cycles", fds[0], now, n)
	}
}

// TestConcurrentClientsOnFewVMs runs 12 clients for
// BANGER_E2E_CONCURRENCY_SECONDS (default 10; 60 when measured), each
// sending random start, stop, restart, kill, show, list and logs commands
// to one of 4 VMs. No command may hang (each is bounded by the harness's
// 3 minutes), fail internally (exit 1) or find the daemon gone (exit 6);
// refusals of a command the VM's state does not allow are expected. Then
// every VM stops and is deleted, leaving nothing.
func TestConcurrentClientsOnFewVMs(t *testing.T) {
	requireE2E(t)
	secs := envInt(t, "BANGER_E2E_CONCURRENCY_SECONDS", 10)
	d := startDaemon(t)
	d.importTestImage()
	const vms, clients = 4, 12
	for i := 0; i < vms; i++ {
		d.createVM(fmt.Sprintf("cc%d", i))
	}
	cmds := [][]string{
		{"vm", "start"}, {"vm", "stop", "--timeout", "5s"}, {"vm", "restart", "--timeout", "5s"}, {"vm", "kill"},
		{"vm", "show"}, {"vm", "list"}, {"vm", "logs"}, {"vm", "ops", "-n", "3"},
	}
	var (
		mu      sync.Mutex
		counts  = map[string]int{}
		bad     []string
		longest time.Duration
	)
	end := time.Now().Add(time.Duration(secs) * time.Second)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 9))
			for time.Now().Before(end) {
				args := append([]string(nil), cmds[rng.IntN(len(cmds))]...)
				if args[1] != "list" {
					args = append(args, fmt.Sprintf("cc%d", rng.IntN(vms)))
				}
				began := time.Now()
				r, err := d.run(args...)
				took := time.Since(began)
				mu.Lock()
				key := fmt.Sprintf("%s exit %d", args[1], r.code)
				counts[key]++
				if took > longest {
					longest = took
				}
				if err != nil && (r.code == 1 || r.code == 6 || r.code == 0 || r.code < 0) {
					bad = append(bad, fmt.Sprintf("%s: %v", strings.Join(args, " "), err))
				}
				mu.Unlock()
			}
		}(uint64(c))
	}
	wg.Wait()
	keys := make([]string, 0, len(counts))
	total := 0
	for k, v := range counts {
		keys = append(keys, fmt.Sprintf("%s: %d", k, v))
		total += v
	}
	sort.Strings(keys)
	t.Logf("%d clients on %d vms for %d s: %d commands, longest %s\n%s", clients, vms, secs, total, longest.Round(time.Millisecond), strings.Join(keys, "\n"))
	if len(bad) > 0 {
		t.Errorf("%d commands failed internally or found no daemon:\n%s", len(bad), strings.Join(bad, "\n"))
	}
	for i := 0; i < vms; i++ {
		name := fmt.Sprintf("cc%d", i)
		d.must("vm", "stop", "--timeout", "5s", name)
		if v := d.show(name); v.State != "stopped" && v.State != "error" {
			t.Errorf("%s is %s after a stop", name, v.State)
		}
	}
}

// killDaemon ends the daemon with SIGKILL, as a crash would.
func (d *daemon) killDaemon() {
	d.t.Helper()
	if d.proc.cmd == nil || d.proc.cmd.Process == nil {
		return
	}
	_ = d.proc.cmd.Process.Kill()
	<-d.proc.exited
	d.proc.cmd = nil
}

// TestDaemonKilledMidOperation SIGKILLs the daemon at
// BANGER_E2E_CRASH_POINTS points (default 6; 25 when measured) spread over
// a create with a published port, a start, a stop, a restart and a delete
// (each point: one operation and a delay after it was sent), restarts it,
// and checks that the VM is then stoppable, startable and deletable and
// that its operation is journalled (done, or interrupted); the harness then
// checks that nothing is left on the host.
func TestDaemonKilledMidOperation(t *testing.T) {
	requireE2E(t)
	n := envInt(t, "BANGER_E2E_CRASH_POINTS", 6)
	d := startDaemon(t)
	d.importTestImage()
	ops := []string{"create", "start", "stop", "restart", "delete"}
	for i := range n {
		op := ops[i%len(ops)]
		delay := time.Duration(50+(i*137)%1500) * time.Millisecond
		name := fmt.Sprintf("crash%d", i)
		// The VM in the state the operation starts from.
		switch op {
		case "start":
			d.createVM(name, "--publish", "18081:80")
		case "stop", "restart", "delete":
			d.createVM(name, "--publish", "18081:80")
			d.must("vm", "start", name)
			d.waitLog(name, testimage.BootLine(1), 1, bootTimeout)
		}
		args := []string{"vm", op, name}
		if op == "create" {
			args = []string{"vm", "create", name, "--publish", "18081:80", "--start"}
		}
		cmd := d.command(args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		d.killDaemon()
		_ = cmd.Wait() // the client sees the daemon go, or had its answer
		d.start()
		t.Logf("point %d: daemon killed %s into vm %s", i, delay, op)
		vms := d.listVMs()
		if len(vms) == 0 {
			if op == "delete" || op == "create" {
				continue // deleted before the kill, or a create discarded
			}
			t.Fatalf("point %d: vm %s of a %s is gone", i, name, op)
		}
		if len(vms) != 1 || vms[0].Name != name {
			t.Fatalf("point %d: vms %+v", i, vms)
		}
		for _, o := range d.ops(name) {
			if o.Status == "running" {
				t.Fatalf("point %d: operation %s still running after the restart", i, o.Kind)
			}
		}
		// Whatever it was left as, it stops, starts (a new boot) and goes.
		d.must("vm", "stop", name)
		boots := strings.Count(d.must("vm", "logs", name), testimage.BootMarker)
		d.must("vm", "start", name)
		d.waitLog(name, testimage.BootMarker, boots+1, bootTimeout)
		d.must("vm", "delete", name)
		if rules := d.publishRules(); strings.Contains(rules, "dnat") {
			t.Fatalf("point %d: publish rules left:\n%s", i, rules)
		}
	}
}
