package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/internal/doctor"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// TestDoctorExitsWhenNoVMMCanRun: on a host where no VMM can run, `banger
// doctor` says so and exits 5 (failed precondition), in both formats.
func TestDoctorExitsWhenNoVMMCanRun(t *testing.T) {
	noVMM := func(l layout.Layout) vmm.Registry {
		q := qemu.New()
		q.Binary = "banger-no-such-qemu"
		return vmm.Registry{
			vmm.KindFirecracker: firecracker.New(firecracker.Config{Binary: "banger-no-such-firecracker", ChrootBase: l.JailDir()}),
			vmm.KindQEMU:        q,
		}
	}

	runDoctor := func(args ...string) (string, error) {
		root := newRootWith(&globals{layout: layout.FromEnv(), drivers: noVMM})
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{"--runtime-dir", t.TempDir(), "--state-dir", t.TempDir(), "doctor"}, args...))
		err := root.Execute()
		return out.String(), err
	}
	out, err := runDoctor()
	if code := cli.ExitCode(err); code != cli.ExitFailedPrecondition {
		t.Fatalf("exit %d (%v), want %d:\n%s", code, err, cli.ExitFailedPrecondition, out)
	}
	for _, want := range []string{"banger-no-such-qemu not found", "banger-no-such-firecracker", "No VMM can run VMs on this host."} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, err = runDoctor("-o", "json")
	if code := cli.ExitCode(err); code != cli.ExitFailedPrecondition {
		t.Fatalf("json: exit %d (%v), want %d", code, err, cli.ExitFailedPrecondition)
	}
	var r doctor.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.CanRunVMs || r.AutoVMM != "" {
		t.Fatalf("json report: %v %+v\n%s", err, r, out)
	}
}
