package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
)

// TestAgent boots one Debian guest of the default image (which carries
// banger-agent) and drives it through the daemon and the agent: readiness,
// exec exit codes, a signal, separate streams and a TTY, cp round trips,
// exec with the guest's network down; then a non-root member of the
// socket group runs `vm run --rm -- id` with no key. It logs `vm exec --
// true` through the agent against SSH over the network, alternating, for
// docs/benchmarks.md.
func TestAgent(t *testing.T) {
	requireE2E(t)
	group, user := nonRootUser(t)
	d := startDaemon(t, "--socket-group", group)
	stdout, _ := d.buildDefaultImage()
	var im api.Image
	mustJSON(t, stdout, &im)
	raw, _ := json.Marshal(im.Manifest)
	var m api.ImageManifest
	mustJSON(t, string(raw), &m)
	if m.Agent == nil || m.Agent.Protocol != 1 || m.Agent.Path != "/usr/local/sbin/banger-agent" || len(m.Agent.SHA256) != 64 {
		t.Fatalf("the manifest does not record the agent: %s", raw)
	}

	// start --wait returns once the agent answers ready: exec works at once.
	d.must("vm", "create", "ag", "--cpus", "1", "--memory", "512M", "--vmm", vmmKind())
	d.must("vm", "start", "--wait", "ag")
	if out := d.must("vm", "exec", "ag", "--", "sudo", "systemctl", "is-active", "banger-agent"); out != "active\n" {
		t.Fatalf("banger-agent unit: %q", out)
	}
	v := d.show("ag")
	if !strings.Contains(v.Agent, "banger-agent protocol 1") {
		t.Fatalf("vm show says agent %q", v.Agent)
	}
	if show := d.must("vm", "show", "ag"); !strings.Contains(show, "Agent:") {
		t.Fatalf("vm show has no Agent line:\n%s", show)
	}

	t.Run("exec", func(t *testing.T) {
		d := d.with(t)
		r, err := d.run("vm", "exec", "ag", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
		if err == nil || r.code != 7 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Fatalf("exit code/streams: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		// A command killed by a signal: 128+n, as a shell reports it.
		if r, _ := d.run("vm", "exec", "ag", "--", "sh", "-c", "kill -KILL $$"); r.code != 128+9 {
			t.Fatalf("killed by KILL: exit %d (%q), want 137", r.code, r.stderr)
		}
		// Arguments arrive intact, with no shell in between.
		if out := d.must("vm", "exec", "ag", "--", "printf", "%s|", "a b", "$HOME", "*"); out != "a b|$HOME|*|" {
			t.Fatalf("argv: %q", out)
		}
		// The default user is the image's (banger), as over SSH.
		if out := d.must("vm", "exec", "ag", "--", "id", "-un"); out != "banger\n" {
			t.Fatalf("user: %q", out)
		}
		// A TTY on request, none without.
		if out := d.must("vm", "exec", "-t", "ag", "--", "tty"); !strings.HasPrefix(out, "/dev/pts/") {
			t.Fatalf("exec -t: tty printed %q", out)
		}
		if r, _ := d.run("vm", "exec", "ag", "--", "tty"); r.code != 1 || !strings.Contains(r.stdout, "not a tty") {
			t.Fatalf("exec without -t: code %d %q", r.code, r.stdout)
		}
		// stdin reaches a batch command.
		cmd := d.command("vm", "exec", "ag", "--", "sha256sum")
		cmd.Stdin = bytes.NewReader(bytesOf(200000))
		out, err := cmd.Output()
		if err != nil || !strings.HasPrefix(string(out), shaBytes(bytesOf(200000))) {
			t.Fatalf("stdin: %v %q", err, out)
		}
	})

	t.Run("cp", func(t *testing.T) {
		d := d.with(t)
		src := t.TempDir()
		os.MkdirAll(filepath.Join(src, "tree", "sub"), 0o755)
		os.WriteFile(filepath.Join(src, "tree", "a.txt"), []byte("hello agent\n"), 0o644)
		os.WriteFile(filepath.Join(src, "tree", "sub", "b.bin"), bytesOf(300001), 0o600)
		os.WriteFile(filepath.Join(src, "tree", "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
		os.Chmod(filepath.Join(src, "tree", "sub", "b.bin"), 0o600)
		os.Chmod(filepath.Join(src, "tree", "run.sh"), 0o755)
		d.must("vm", "cp", filepath.Join(src, "tree"), "ag:/tmp/")
		out := d.must("vm", "exec", "ag", "--", "sudo", "sha256sum", "/tmp/tree/a.txt", "/tmp/tree/sub/b.bin") // cp through the agent writes as root; b.bin is 0600
		for _, f := range []string{"tree/a.txt", "tree/sub/b.bin"} {
			if !strings.Contains(out, sha(filepath.Join(src, f))+"  /tmp/"+f) {
				t.Fatalf("checksum of %s on the guest differs:\n%s", f, out)
			}
		}
		if modes := d.must("vm", "exec", "ag", "--", "stat", "-c", "%a %n", "/tmp/tree/a.txt", "/tmp/tree/sub/b.bin", "/tmp/tree/run.sh"); modes != "644 /tmp/tree/a.txt\n600 /tmp/tree/sub/b.bin\n755 /tmp/tree/run.sh\n" {
			t.Fatalf("modes on the guest:\n%s", modes)
		}
		back := t.TempDir()
		d.must("vm", "cp", "ag:/tmp/tree", back)
		if treeSums(t, filepath.Join(src, "tree")) != treeSums(t, filepath.Join(back, "tree")) {
			t.Fatal("copied back content differs")
		}
		for f, want := range map[string]os.FileMode{"tree/sub/b.bin": 0o600, "tree/run.sh": 0o755} {
			if fi, err := os.Stat(filepath.Join(back, f)); err != nil || fi.Mode().Perm() != want {
				t.Fatalf("%s copied back: %v %v, want mode %o", f, fi.Mode(), err, want)
			}
		}
	})

	t.Run("bench-exec", func(t *testing.T) {
		d := d.with(t)
		var viaAgent, viaSSH []time.Duration
		for i := range 10 {
			order := []string{"agent", "ssh"}
			if i%2 == 1 {
				order = []string{"ssh", "agent"}
			}
			for _, how := range order {
				args := []string{"vm", "exec", "ag", "--", "true"}
				if how == "ssh" {
					args = []string{"vm", "ssh", "--network", "ag", "--", "true"}
				}
				began := time.Now()
				d.must(args...)
				took := time.Since(began)
				if how == "agent" {
					viaAgent = append(viaAgent, took)
				} else {
					viaSSH = append(viaSSH, took)
				}
			}
		}
		ma, ms := median(viaAgent), median(viaSSH)
		t.Logf("vm exec -- true, 10 rounds alternating: agent median %s (%s..%s), ssh median %s (%s..%s), ratio %.2f",
			ma, slices.Min(viaAgent), slices.Max(viaAgent), ms, slices.Min(viaSSH), slices.Max(viaSSH), float64(ma)/float64(ms))
	})

	t.Run("network-down", func(t *testing.T) {
		d := d.with(t)
		iface := guestInterface(t, d, v.GuestIP)
		d.must("vm", "exec", "ag", "--", "sudo", "ip", "link", "set", iface, "down")
		// SSH over the network cannot reach the guest any more...
		if r, err := d.run("vm", "ssh", "--network", "ag", "--", "true"); err == nil || !strings.Contains(r.stderr, "timeout") {
			t.Fatalf("ssh over the network still works with %s down: %+v", iface, r)
		}
		// ...the agent still does, and brings it back.
		if out := d.must("vm", "exec", "ag", "--", "cat", "/sys/class/net/"+iface+"/operstate"); out != "down\n" {
			t.Fatalf("operstate %q", out)
		}
		d.must("vm", "exec", "ag", "--", "sudo", "ip", "link", "set", iface, "up")
	})

	t.Run("non-root", func(t *testing.T) {
		d := d.with(t)
		bin := userBinary(t, d.bin)
		// The runtime dir's parent must be traversable by the group.
		if err := os.Chmod(filepath.Dir(d.runDir), 0o711); err != nil {
			t.Fatal(err)
		}
		asUser := func(args ...string) (result, error) {
			full := append([]string{"netns", "exec", d.netns, "setpriv", "--reuid=" + user, "--regid=" + group, "--init-groups",
				bin, "--state-dir", d.stateDir, "--runtime-dir", d.runDir}, args...)
			cmd := exec.Command("ip", full...)
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			r := result{stdout: o.String(), stderr: e.String()}
			if ee, ok := errors.AsType[*exec.ExitError](err); ok {
				r.code = ee.ExitCode()
			}
			return r, err
		}
		r, err := asUser("vm", "run", "--rm", "--cpus", "1", "--memory", "512M", "--vmm", vmmKind(), "--", "id")
		if err != nil || !strings.HasPrefix(r.stdout, "uid=1000(banger)") {
			t.Fatalf("vm run --rm -- id as %s: %v, stdout %q stderr %s", user, err, r.stdout, tail([]byte(r.stderr), 2000))
		}
		// root's VM is not the member's to reach, by any path.
		if r, err := asUser("vm", "ssh", "--network", "ag", "--", "true"); err == nil || r.code != 9 || !strings.Contains(r.stderr, "belongs to another user") {
			t.Fatalf("network ssh as %s: code %d %q", user, r.code, r.stderr)
		}
		if vms := d.listVMs(); len(vms) != 1 {
			t.Fatalf("vm run --rm left %d vms", len(vms)-1)
		}
	})

	d.must("vm", "delete", "ag")
}

// nonRootUser makes a system group and a user in it for this test, removed
// at the end.
func nonRootUser(t *testing.T) (group, user string) {
	t.Helper()
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	group, user = "bgrag"+suffix, "bgrag"+suffix
	if out, err := exec.Command("groupadd", "--system", group).CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("groupdel", group).Run() })
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--gid", group, "--shell", "/usr/sbin/nologin", user).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", user).Run() })
	return group, user
}

// userBinary copies bin where any user may run it.
func userBinary(t *testing.T, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bgr-agent-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "banger")
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// guestInterface is the guest's interface holding ip.
func guestInterface(t *testing.T, d *daemon, ip string) string {
	t.Helper()
	for _, line := range strings.Split(d.must("vm", "exec", "ag", "--", "ip", "-o", "-4", "addr", "show"), "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasPrefix(f[3], ip+"/") {
			return f[1]
		}
	}
	t.Fatalf("no guest interface holds %s", ip)
	return ""
}

func shaBytes(b []byte) string {
	f, _ := os.CreateTemp("", "bgr-sha-")
	defer os.Remove(f.Name())
	f.Write(b)
	f.Close()
	return sha(f.Name())
}
