package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
)

func TestVMShowPrintsTheNetworkPolicy(t *testing.T) {
	for _, c := range []struct {
		pol  api.NetworkPolicy
		want string
	}{
		{api.NetworkPolicy{Egress: "internet"}, "egress internet; isolated"},
		{api.NetworkPolicy{Egress: "none", Allow: []string{"10.0.0.0/8:443/tcp"}, Deny: []string{"10.0.0.1"}, Networks: []string{"team"}},
			"egress none; deny 10.0.0.1; allow 10.0.0.0/8:443/tcp; networks team"},
	} {
		v := sampleVM
		v.Network = c.pol
		var b bytes.Buffer
		if err := renderVM(&b, "table", v); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), "Network:") || !strings.Contains(b.String(), c.want) {
			t.Errorf("vm show lacks the line %q:\n%s", c.want, b.String())
		}
	}
}

// TestVMSetNeedsAFlag: vm set without a policy flag is a usage error that
// never reaches the daemon.
func TestVMSetNeedsAFlag(t *testing.T) {
	_, err := run(t, "vm", "set", "web")
	if cli.ExitCode(err) != cli.ExitInvalidArgument || !strings.Contains(err.Error(), "--egress") {
		t.Fatalf("vm set without flags: %v (exit %d)", err, cli.ExitCode(err))
	}
	// With one it reaches for the daemon, which is not running.
	if _, err := run(t, "vm", "set", "web", "--egress", "none"); cli.ExitCode(err) != cli.ExitUnavailable {
		t.Fatalf("no daemon: %v", err)
	}
}
