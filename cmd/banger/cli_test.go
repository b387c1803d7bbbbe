package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
)

var sampleVM = api.VM{
	ID: "0123456789abcdef0123456789abcdef", Name: "web", ImageID: "fedcba9876543210", Image: "default",
	VCPUs: 2, MemoryMiB: 1024, DiskBytes: 4 << 30, VMM: "qemu", State: "running", GuestIP: "172.30.0.2",
	LogPath: "/var/lib/banger/vms/0123/vm.log", VMDir: "/var/lib/banger/vms/0123",
	Runtime:   api.Runtime{PID: 4242, Accel: "tcg", ControlSocket: "/run/banger/fc-01234567.sock", StartedAt: time.Unix(1000, 0)},
	CreatedAt: time.Unix(900, 0), UpdatedAt: time.Unix(1000, 0),
	LastOperation: &api.Operation{ID: 3, Kind: "vm.start", Status: "done", StartedAt: time.Unix(999, 0), EndedAt: time.Unix(1000, 0), DurationMS: 1000,
		Stages: []api.Stage{{Name: "vmm.launch", Status: "done", At: time.Unix(999, 500)}}},
	Unsupported: map[string]string{"vsock": "the qemu driver offers no vsock device on this host"},
}

// sampleSummary is sampleVM as `vm list` gets it.
var sampleSummary = api.VMSummary{ID: sampleVM.ID, Name: sampleVM.Name, State: sampleVM.State, VMM: sampleVM.VMM,
	VCPUs: sampleVM.VCPUs, MemoryMiB: sampleVM.MemoryMiB, GuestIP: sampleVM.GuestIP, Image: sampleVM.Image,
	Runtime: api.SummaryRuntime{PID: sampleVM.Runtime.PID}, OwnerUID: 1234}

func TestRenderVMTable(t *testing.T) {
	var b bytes.Buffer
	if err := renderVMs(&b, "table", []api.VMSummary{sampleSummary}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") {
		t.Fatalf("table:\n%s", b.String())
	}
	for _, want := range []string{"web", "0123456789ab", "running", "qemu", "1024MiB", "172.30.0.2", "default", "4242"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row %q lacks %q", lines[1], want)
		}
	}
	b.Reset()
	if err := renderVM(&b, "table", sampleVM); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"State:", "running", "PID:", "4242", "Unsupported:", "vsock: the qemu driver", "Last operation:", "vm.start", "vmm.launch", "Disk:", "4.0 GiB"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("show output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestRenderJSONIsTheAPIStruct(t *testing.T) {
	var b bytes.Buffer
	if err := renderVM(&b, "json", sampleVM); err != nil {
		t.Fatal(err)
	}
	var one api.VM
	if err := json.Unmarshal(b.Bytes(), &one); err != nil {
		t.Fatalf("json output does not parse: %v\n%s", err, b.String())
	}
	if one.ID != sampleVM.ID || one.Runtime.PID != 4242 || one.LastOperation.Stages[0].Name != "vmm.launch" {
		t.Fatalf("round trip: %+v", one)
	}
	// A list's entries are summaries whose fields keep the names of
	// api.VM's: scripts (and the e2e tests) decode them as VMs.
	b.Reset()
	if err := renderVMs(&b, "json", []api.VMSummary{sampleSummary}); err != nil {
		t.Fatal(err)
	}
	var back []api.VM
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatalf("json output does not parse: %v\n%s", err, b.String())
	}
	want := api.VM{ID: sampleVM.ID, Name: "web", Image: "default", VCPUs: 2, MemoryMiB: 1024,
		VMM: "qemu", State: "running", GuestIP: "172.30.0.2", Runtime: api.Runtime{PID: 4242}, OwnerUID: 1234}
	if len(back) != 1 || !reflect.DeepEqual(back[0], want) {
		t.Fatalf("list entry as an api.VM:\n got %+v\nwant %+v", back[0], want)
	}
	b.Reset()
	if err := renderImage(&b, "json", api.Image{Name: "default", Manifest: &api.ImageManifest{Release: "bookworm"}}); err != nil {
		t.Fatal(err)
	}
	var im api.Image
	if err := json.Unmarshal(b.Bytes(), &im); err != nil || im.Name != "default" {
		t.Fatalf("image json: %v %s", err, b.String())
	}
}

func TestRenderOpsAndImages(t *testing.T) {
	var b bytes.Buffer
	ops := []api.Operation{*sampleVM.LastOperation, {Kind: "vm.stop", Status: "failed", Error: "boom", StartedAt: time.Unix(5, 0)}}
	if err := renderOps(&b, "table", ops); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"vm.start", "done", "vmm.launch", "vm.stop", "failed", "error: boom", "running"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("ops output lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	renderImages(&b, "table", []api.Image{{ID: "abcdef0123456789", Name: "default", RootfsBytes: 1 << 30, InitrdPath: "/x"}})
	if !strings.Contains(b.String(), "default") || !strings.Contains(b.String(), "1.0 GiB") || !strings.Contains(b.String(), "yes") {
		t.Fatalf("images:\n%s", b.String())
	}
}

func TestExitCodes(t *testing.T) {
	for err, want := range map[error]int{
		errdefs.InvalidArgument("x"):    cli.ExitInvalidArgument,
		errdefs.NotFound("x"):           cli.ExitNotFound,
		errdefs.AlreadyExists("x"):      cli.ExitAlreadyExists,
		errdefs.Conflict("x"):           cli.ExitAlreadyExists,
		errdefs.FailedPrecondition("x"): cli.ExitFailedPrecondition,
		errdefs.Unavailable("x"):        cli.ExitUnavailable,
		errdefs.NotSupported("x"):       cli.ExitNotSupported,
		errdefs.OutOfSpace("x"):         cli.ExitOutOfSpace,
		errdefs.PermissionDenied("x"):   cli.ExitPermissionDenied,
		errors.New("x"):                 cli.ExitInternal,
		&cli.ExitError{Code: 42}:        42,
	} {
		if got := cli.ExitCode(err); got != want {
			t.Errorf("cli.ExitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "4G": 4 << 30, "1.5GiB": 3 << 29, "100B": 100, "2048": 2048 << 20, "1t": 1 << 40} {
		got, err := cli.ParseSize(in, 1<<20)
		if err != nil || got != want {
			t.Errorf("cli.ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1G", "4X", "four", "1e30G"} {
		if _, err := cli.ParseSize(bad, 1<<20); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("cli.ParseSize(%q) accepted", bad)
		}
	}
}

// run executes the CLI with args against a daemon that is not there.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"--runtime-dir", t.TempDir()}, args...))
	err := root.Execute()
	return out.String(), err
}

func TestCLIRejectsBadInputBeforeCallingTheDaemon(t *testing.T) {
	for _, args := range [][]string{
		{"vm", "create", "web", "--cpus", "0"},
		{"vm", "create", "web", "--cpus", "-2"},
		{"vm", "create", "web", "--memory", "0"},
		{"vm", "create", "web", "--memory", "lots"},
		{"vm", "create", "web", "--disk-size", "0"},
		{"vm", "list", "--output", "yaml"},
		{"vm", "create", "web", "--bogus"},
	} {
		_, err := run(t, args...)
		if cli.ExitCode(err) != cli.ExitInvalidArgument {
			t.Errorf("%v: err %v (exit %d), want invalid argument", args, err, cli.ExitCode(err))
		}
	}
	// Well-formed input reaches for the daemon, which is not running.
	if _, err := run(t, "vm", "create", "web", "--cpus", "1"); cli.ExitCode(err) != cli.ExitUnavailable {
		t.Fatalf("no daemon: %v", err)
	}
}

func TestRenderImageManifest(t *testing.T) {
	raw := &api.ImageManifest{
		Release: "bookworm", Mirror: "http://deb.debian.org/debian", KernelVersion: "6.1.0-56-cloud-amd64",
		KernelPackage: "linux-image-cloud-amd64", KernelPackageVersion: "6.1.192-2", DurationSeconds: 45.2,
		Packages:  []api.ImagePackage{{Name: "openssh-server", Version: "1:9.2p1-2"}, {Name: "systemd", Version: "252.39-1"}},
		Artifacts: []api.ImageArtifact{{Name: "vmlinux", Size: 53243444, SHA256: "ab12"}, {Name: "rootfs.ext4", Size: 2 << 30, SHA256: "cd34"}},
	}
	var b bytes.Buffer
	if err := renderImage(&b, "table", api.Image{Name: "default", Manifest: raw}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Release:", "bookworm", "6.1.0-56-cloud-amd64", "vmlinux  50.8 MiB  sha256:ab12", "rootfs.ext4  2.0 GiB  sha256:cd34", "Packages:", "2 (each with its version: banger image show default -o json)", "in 45.2s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("manifest output lacks %q:\n%s", want, b.String())
		}
	}
	// The package list is counted, never printed in full: it is ~150 long.
	if strings.Contains(b.String(), "openssh-server") || strings.Contains(b.String(), "252.39-1") {
		t.Errorf("table output lists packages:\n%s", b.String())
	}
	b.Reset()
	if err := renderImage(&b, "json", api.Image{Name: "default", Manifest: raw}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"openssh-server"`) || !strings.Contains(b.String(), `"252.39-1"`) {
		t.Errorf("json output lacks the packages:\n%s", b.String())
	}
}

// writeCounter counts the writes that reach the terminal.
type writeCounter struct {
	bytes.Buffer
	writes int
}

func (w *writeCounter) Write(p []byte) (int, error) { w.writes++; return w.Buffer.Write(p) }

// A long table reaches the terminal in a few writes, not one per cell (a
// write per cell was a third of `vm list`'s CPU time at 1000 VMs), and
// whole: every row, aligned.
func TestTableIsBuffered(t *testing.T) {
	vms := make([]api.VMSummary, 1000)
	for i := range vms {
		vms[i] = api.VMSummary{ID: fmt.Sprintf("%012d%s", i, strings.Repeat("f", 20)), Name: fmt.Sprintf("vm-%d", i), State: "stopped", VMM: "qemu", VCPUs: 1, MemoryMiB: 512, Image: "default"}
	}
	var w writeCounter
	if err := renderVMs(&w, "table", vms); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n")
	if len(lines) != 1001 || !strings.HasPrefix(lines[1000], "vm-999 ") {
		t.Fatalf("table has %d lines, last %q", len(lines), lines[len(lines)-1])
	}
	if col := strings.Index(lines[0], "ID"); strings.Index(lines[1], "000000000000") != col || strings.Index(lines[1000], "000000000999") != col {
		t.Errorf("columns not aligned:\n%s\n%s\n%s", lines[0], lines[1], lines[1000])
	}
	if w.writes > 20 {
		t.Errorf("the table took %d writes", w.writes)
	}
}
