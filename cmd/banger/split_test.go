package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// goCommand is the go tool (`go test` puts its own first on PATH). These
// tests need it: they fail without it rather than skip.
func goCommand(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("these tests need the go command on PATH: %v", err)
	}
	return p
}

// TestCLILinksNoDaemon: the CLI links none of the daemon. Each of these
// adds package initialisers (and megabytes) to every `banger` command's
// start; the daemon's binary is bangerd.
func TestCLILinksNoDaemon(t *testing.T) {
	out, err := exec.Command(goCommand(t), "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/banger-vm/banger/client") {
		t.Fatalf("go list -deps did not list the client; output:\n%s", out)
	}
	const mod = "github.com/banger-vm/banger/"
	forbidden := []string{
		mod + "internal/daemon", mod + "internal/server", mod + "internal/store", mod + "internal/image/build",
		mod + "internal/network", mod + "internal/vmm", mod + "internal/doctor", mod + "cmd/bangerd",
		"modernc.org", "github.com/google/nftables", "github.com/digitalocean/go-qemu", "github.com/digitalocean/go-libvirt",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				t.Errorf("cmd/banger links %s (it belongs to bangerd only; see `go list -deps ./cmd/banger`)", d)
			}
		}
	}
}

// TestDaemonCommandExecsBangerd: `banger daemon` and `banger doctor` become
// bangerd (same PID, its arguments and environment), found next to the
// banger binary (symlinks resolved), else on PATH; without one they fail
// with exit 5 naming where they looked and how to build it.
func TestDaemonCommandExecsBangerd(t *testing.T) {
	dir := t.TempDir()
	banger := filepath.Join(dir, "next", "banger")
	if out, err := exec.Command(goCommand(t), "build", "-o", banger, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// A stand-in bangerd: it says what it was given and which process it is.
	fake := "#!/bin/sh\necho \"pid=$$\"\necho \"self=$0\"\nfor a in \"$@\"; do echo \"arg=$a\"; done\necho \"mark=$BANGER_TEST_MARK\"\n"
	writeExe := func(p string) string {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	copyBanger := func(p string) string {
		b, err := os.ReadFile(banger)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	emptyPath := filepath.Join(dir, "empty")
	if err := os.Mkdir(emptyPath, 0o755); err != nil {
		t.Fatal(err)
	}
	// run runs bin with args and PATH=path; it returns stdout, stderr, the
	// exit code and the PID it started.
	run := func(bin, path string, args ...string) (string, string, int, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = []string{"PATH=" + path, "BANGER_TEST_MARK=kept"}
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		_ = cmd.Wait()
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode(), pid
	}
	expect := func(t *testing.T, bin, path, bangerd string, args, want []string) {
		t.Helper()
		out, errOut, code, pid := run(bin, path, args...)
		lines := []string{"pid=" + strconv.Itoa(pid), "self=" + bangerd}
		for _, a := range want {
			lines = append(lines, "arg="+a)
		}
		lines = append(lines, "mark=kept")
		if code != 0 || out != strings.Join(lines, "\n")+"\n" {
			t.Errorf("banger %q: exit %d, stdout:\n%s\nstderr: %s\nwant stdout:\n%s", args, code, out, errOut, strings.Join(lines, "\n"))
		}
	}

	next := writeExe(filepath.Join(dir, "next", "bangerd"))
	onPath := writeExe(filepath.Join(dir, "bin", "bangerd"))

	t.Run("next to banger", func(t *testing.T) {
		// The one next to banger wins over the one on PATH.
		expect(t, banger, filepath.Dir(onPath), next,
			[]string{"--state-dir", "/s", "daemon", "--no-network", "--log-level", "debug", "--", "x"},
			[]string{"--state-dir", "/s", "--no-network", "--log-level", "debug", "--", "x"})
		expect(t, banger, emptyPath, next, []string{"-o", "json", "doctor", "--bridge", "br9"},
			[]string{"doctor", "-o", "json", "--bridge", "br9"})
	})
	t.Run("through a symlink", func(t *testing.T) {
		link := filepath.Join(dir, "links", "banger")
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(banger, link); err != nil {
			t.Fatal(err)
		}
		expect(t, link, emptyPath, next, []string{"daemon"}, nil)
	})
	t.Run("on PATH", func(t *testing.T) {
		alone := copyBanger(filepath.Join(dir, "alone", "banger"))
		expect(t, alone, emptyPath+":"+filepath.Dir(onPath), onPath, []string{"daemon", "--help"}, []string{"--help"})
	})
	t.Run("missing", func(t *testing.T) {
		alone := copyBanger(filepath.Join(dir, "missing", "banger"))
		for _, args := range [][]string{{"daemon", "--no-network"}, {"doctor"}} {
			out, errOut, code, _ := run(alone, emptyPath, args...)
			want := filepath.Join(dir, "missing", "bangerd")
			if code != 5 || out != "" || !strings.Contains(errOut, "nor on PATH") || !strings.Contains(errOut, "("+want+")") ||
				!strings.Contains(errOut, "hint: go build -o "+want+" ./cmd/bangerd") {
				t.Errorf("banger %q without bangerd: exit %d, stdout %q, stderr %q", args, code, out, errOut)
			}
		}
	})
}
