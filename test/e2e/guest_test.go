package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
)

// cacheDir keeps what tests may reuse across runs (downloaded packages).
func cacheDir() string {
	if c := os.Getenv("BANGER_TEST_CACHE"); c != "" {
		return c
	}
	return "/var/cache/banger-test"
}

// TestGuests builds the default image through the CLI (the package cache
// is shared across test runs), then exercises networking and guest access
// on real Debian guests, all inside the daemon's own network namespace.
func TestGuests(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)

	began := time.Now()
	stdout, stderr := d.buildDefaultImage()
	t.Logf("image build took %s", time.Since(began).Round(time.Second))
	for _, stage := range []string{"packages", "kernel", "initramfs", "filesystem"} {
		if !strings.Contains(stderr, stage+": done") {
			t.Errorf("build progress does not show stage %q done:\n%s", stage, tail([]byte(stderr), 2000))
		}
	}
	var im api.Image
	mustJSON(t, stdout, &im)
	m := im.Manifest
	if m == nil || m.Release != "bookworm" || m.KernelVersion == "" || len(m.Packages) < 50 || len(m.Artifacts) < 4 {
		t.Fatalf("manifest incomplete: %s", stdout)
	}
	for _, a := range m.Artifacts {
		if a.Size <= 0 || len(a.SHA256) != 64 {
			t.Fatalf("artifact without size or sha256: %+v", a)
		}
	}
	if show := d.must("image", "show", "default"); !strings.Contains(show, "Manifest:") || !strings.Contains(show, m.KernelVersion) {
		t.Fatalf("image show does not print the manifest:\n%s", show)
	}

	t.Run("bad-builds", func(t *testing.T) {
		d := d.with(t)
		d.withBuildDaemon(func(cli func(args ...string) (result, error)) {
			r, _ := cli("image", "build", "broken", "--packages", "banger-no-such-package")
			if r.code != 3 || !strings.Contains(r.stderr, "banger-no-such-package") {
				t.Errorf("unknown package: exit %d, %s", r.code, tail([]byte(r.stderr), 600))
			}
			for _, c := range []struct {
				code int
				args []string
			}{
				{2, []string{"image", "build", "tiny", "--size", "64M"}},
				{2, []string{"image", "build", "old", "--release", "hamm"}},
				{4, []string{"image", "build"}}, // default exists
			} {
				if r, _ := cli(c.args...); r.code != c.code || !strings.HasPrefix(r.stderr, "banger: ") {
					t.Errorf("%v: exit %d, %q", c.args, r.code, r.stderr)
				}
			}
		})
		if strings.Contains(d.must("image", "list"), "broken") {
			t.Fatal("a failed build registered an image")
		}
		for _, dir := range []string{filepath.Join(d.stateDir, "tmp")} {
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("a failed build left %v in %s", entries, dir)
			}
		}
		if entries, _ := os.ReadDir(filepath.Join(d.stateDir, "images")); len(entries) != 1 {
			t.Fatalf("images dir holds %d entries, want the default image's only", len(entries))
		}
	})

	t.Run("run-rm", func(t *testing.T) {
		d := d.with(t)
		out := d.must("vm", "run", "--rm", "--cpus", "2", "--vmm", vmmKind(), "--", "uname", "-a")
		if !strings.Contains(out, "Linux") || !strings.Contains(out, m.KernelVersion) {
			t.Fatalf("vm run printed %q, want the guest kernel %s", out, m.KernelVersion)
		}
		if vms := d.listVMs(); len(vms) != 0 {
			t.Fatalf("vm run --rm left %d vms", len(vms))
		}
	})

	t.Run("isolation", func(t *testing.T) { testIsolation(t, d.with(t)) })
	t.Run("forks", func(t *testing.T) { testForks(t, d.with(t)) })

	t.Run("two-vms", func(t *testing.T) {
		d := d.with(t)
		a := d.startVM("alpha", "--network", "pair")
		b := d.startVM("beta", "--network", "pair", "--publish", "12222:22")
		if a.GuestIP == b.GuestIP || a.GuestIP == "" {
			t.Fatalf("ips %s and %s", a.GuestIP, b.GuestIP)
		}
		gateway := gatewayOf(t, a.GuestIP)
		// Each reaches the other's SSH server (they share a network), and
		// the gateway answers nothing: guests reach nothing of the host (a
		// dropped connection times out; it is not refused).
		for _, pair := range [][2]string{{"alpha", b.GuestIP}, {"beta", a.GuestIP}} {
			// start --wait returns when the agent answers; sshd may come up
			// a little later: wait for it (bounded), then read its banner.
			probe := "for i in $(seq 180); do (exec 3<>/dev/tcp/" + pair[1] + "/22) 2>/dev/null && break; sleep 1; done; exec 3<>/dev/tcp/" + pair[1] + "/22; head -c 7 <&3"
			if out := d.must("vm", "exec", pair[0], "--", "bash", "-c", probe); out != "SSH-2.0" {
				t.Fatalf("%s -> %s:22 read %q", pair[0], pair[1], out)
			}
		}
		r, _ := d.run("vm", "exec", "alpha", "--", "timeout", "5", "bash", "-c", "exec 3<>/dev/tcp/"+gateway+"/9")
		if r.code != 124 || strings.Contains(r.stderr, "Connection refused") {
			t.Fatalf("the gateway answered alpha (want a timeout): code %d %q", r.code, r.stderr)
		}
		if out := d.must("vm", "exec", "alpha", "--", "hostname"); strings.TrimSpace(out) != "alpha" {
			t.Fatalf("hostname %q", out)
		}
		// exec: output, separate stderr, exit codes.
		r, err := d.run("vm", "exec", "alpha", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
		if err == nil || r.code != 7 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err") || strings.Contains(r.stdout, "err") {
			t.Fatalf("exec exit code/streams: code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
		// cp both ways, a file and a directory, identical checksums.
		src := t.TempDir()
		os.MkdirAll(filepath.Join(src, "tree", "sub"), 0o755)
		os.WriteFile(filepath.Join(src, "tree", "a.txt"), []byte("hello banger\n"), 0o644)
		os.WriteFile(filepath.Join(src, "tree", "sub", "b.bin"), bytesOf(300000), 0o600)
		os.WriteFile(filepath.Join(src, "file.bin"), bytesOf(123457), 0o644)
		d.must("vm", "cp", filepath.Join(src, "file.bin"), "alpha:/tmp/file.bin")
		d.must("vm", "cp", filepath.Join(src, "tree"), "alpha:/tmp/")
		out := d.must("vm", "exec", "alpha", "--", "sudo", "sha256sum", "/tmp/file.bin", "/tmp/tree/a.txt", "/tmp/tree/sub/b.bin") // cp through the agent writes as root; b.bin is 0600
		for _, f := range []string{"file.bin", "tree/a.txt", "tree/sub/b.bin"} {
			if !strings.Contains(out, sha(filepath.Join(src, f))+"  /tmp/"+f) {
				t.Fatalf("checksum of %s on the guest differs:\n%s", f, out)
			}
		}
		if modes := d.must("vm", "exec", "alpha", "--", "stat", "-c", "%a %n", "/tmp/tree/a.txt", "/tmp/tree/sub/b.bin", "/tmp/tree/sub"); modes != "644 /tmp/tree/a.txt\n600 /tmp/tree/sub/b.bin\n755 /tmp/tree/sub\n" {
			t.Fatalf("modes on the guest:\n%s", modes)
		}
		back := t.TempDir()
		d.must("vm", "cp", "alpha:/tmp/tree", back)
		d.must("vm", "cp", "alpha:/tmp/file.bin", filepath.Join(back, "file.bin"))
		if treeSums(t, filepath.Join(src, "tree")) != treeSums(t, filepath.Join(back, "tree")) || sha(filepath.Join(back, "file.bin")) != sha(filepath.Join(src, "file.bin")) {
			t.Fatal("copied back content differs")
		}

		// A published port (host 12222 to beta's sshd) answers from the test
		// namespace while the VM runs, and not after it stops.
		if got := d.netnsTry(gateway + ":12222"); !strings.HasPrefix(got, "SSH-2.0") {
			t.Fatalf("published port answered %q", got)
		}
		d.must("vm", "stop", "beta")
		if rules := d.publishRules(); strings.Contains(rules, "dnat") {
			t.Fatalf("publish rules left after stop:\n%s", rules)
		}
		if got := d.netnsTry(gateway + ":12222"); got != "refused" {
			t.Fatalf("published port still answers after stop: %q (want a refused connection, not a timeout)", got)
		}

		// Host keys: each VM has its own, pinned, not from the image.
		ka, kb := d.show("alpha").HostKey, d.show("beta").HostKey
		if ka == "" || kb == "" || ka == kb {
			t.Fatalf("host keys not per-vm: %q %q", ka, kb)
		}
		guestKey := strings.TrimSpace(d.must("vm", "exec", "alpha", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub"))
		if !strings.HasPrefix(guestKey, ka) {
			t.Fatalf("the guest's host key %q is not the pinned %q", guestKey, ka)
		}
		// A changed pin makes ssh refuse.
		kh := filepath.Join(d.stateDir, "ssh", "known_hosts")
		orig, _ := os.ReadFile(kh)
		os.WriteFile(kh, []byte(strings.ReplaceAll(string(orig), ka, kb)), 0o600)
		r, err = d.run("vm", "ssh", "--network", "alpha", "--", "true")
		if err == nil || !strings.Contains(r.stderr, "alpha") || !strings.Contains(r.stderr, kh) {
			t.Fatalf("a wrong pin was not refused, or the error does not name the vm and file: %v %s", err, r.stderr)
		}
		os.WriteFile(kh, orig, 0o600)

		// Delete alpha; a new vm with the same name gets the same IP and ssh works.
		d.must("vm", "delete", "alpha")
		if pins, _ := os.ReadFile(kh); strings.Contains(string(pins), a.GuestIP+" ") || strings.Contains(string(pins), "alpha ") {
			t.Fatalf("pins of a deleted vm remain:\n%s", pins)
		}
		again := d.startVM("alpha")
		if again.GuestIP != a.GuestIP {
			t.Fatalf("the new alpha got %s, not the released %s", again.GuestIP, a.GuestIP)
		}
		if out := d.must("vm", "ssh", "alpha", "--", "cat", "/etc/hostname"); strings.TrimSpace(out) != "alpha" {
			t.Fatalf("ssh to the new alpha: %q", out)
		}
		d.must("vm", "delete", "alpha", "beta")
		d.assertNetworkClean(kh)
	})
}

// with rebinds the daemon handle to a subtest.
func (d *daemon) with(t *testing.T) *daemon {
	c := *d
	c.t = t
	return &c
}

// startVM creates and starts a small Debian VM and waits for its SSH.
func (d *daemon) startVM(name string, extra ...string) api.VM {
	d.t.Helper()
	args := append([]string{"vm", "create", name, "--cpus", "1", "--memory", "512M", "--vmm", vmmKind()}, extra...)
	d.must(args...)
	d.must("vm", "start", "--wait", name)
	return d.show(name)
}

func gatewayOf(t *testing.T, ip string) string {
	a := net.ParseIP(ip).To4()
	if a == nil {
		t.Fatalf("bad ip %q", ip)
	}
	a[3] = 1
	return a.String()
}

// netnsTry reads the first bytes addr sends on connect, from the daemon's
// namespace: the bytes, "refused" for a refused connection, or "timeout"
// (a connection nothing answered is not the same as a refused one).
func (d *daemon) netnsTry(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	var stderr strings.Builder
	cmd := exec.Command("ip", "netns", "exec", d.netns, "timeout", "10", "bash", "-c",
		"exec 3<>/dev/tcp/"+host+"/"+port+" && head -c 7 <&3")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	switch {
	case err == nil && len(out) > 0:
		return string(out)
	case strings.Contains(stderr.String(), "Connection refused"):
		return "refused"
	}
	return "timeout"
}

// publishRules is the publish chain of banger's table in the namespace.
func (d *daemon) publishRules() string {
	out, err := exec.Command("ip", "netns", "exec", d.netns, "nft", "list", "chain", "inet", "banger", "publish").CombinedOutput()
	if err != nil {
		d.t.Fatalf("nft list chain: %v %s", err, out)
	}
	return string(out)
}

// assertNetworkClean checks that no tap, published rule or pin is left in
// the daemon's namespace once every VM is gone.
func (d *daemon) assertNetworkClean(knownHosts string) {
	d.t.Helper()
	links, _ := exec.Command("ip", "-n", d.netns, "-o", "link", "show").CombinedOutput()
	if strings.Contains(string(links), "tap-fc-") {
		d.t.Fatalf("taps left:\n%s", links)
	}
	if rules := d.publishRules(); strings.Contains(rules, "dnat") {
		d.t.Fatalf("publish rules left:\n%s", rules)
	}
	if pins, _ := os.ReadFile(knownHosts); len(strings.TrimSpace(string(pins))) != 0 {
		d.t.Fatalf("pins left:\n%s", pins)
	}
	if vms := d.listVMs(); len(vms) != 0 {
		d.t.Fatalf("vms left: %v", vms)
	}
}

func bytesOf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func sha(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "missing:" + path
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// treeSums is every file's relative path, mode and checksum.
func treeSums(t *testing.T, root string) string {
	var b strings.Builder
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		fi, _ := e.Info()
		fmt.Fprintf(&b, "%s %v", rel, fi.Mode())
		if !e.IsDir() {
			fmt.Fprintf(&b, " %s", sha(p))
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}
