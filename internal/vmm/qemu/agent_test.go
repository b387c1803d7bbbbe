package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/vmm"
)

// TestAgentChannel: a spec with an agent socket gets the agent's
// virtio-serial port on it; without one, no such device. Cleanup removes
// the socket.
func TestAgentChannel(t *testing.T) {
	d := New()
	spec := vmm.Spec{Name: "a", VCPUs: 1, MemoryMiB: 128, Kernel: "k", RootDisk: "r", ControlSocket: "/run/q.sock", LogPath: "l"}
	if args := strings.Join(d.Args(spec, "tcg", false), " "); strings.Contains(args, "virtserialport") {
		t.Fatalf("no agent socket, yet: %s", args)
	}
	spec.AgentSocket = filepath.Join(t.TempDir(), "fc-x.agent")
	args := strings.Join(d.Args(spec, "tcg", false), " ")
	if !strings.Contains(args, strings.Join(agent.QEMUArgs(spec.AgentSocket), " ")) {
		t.Fatalf("agent args missing: %s", args)
	}
	spec.ControlSocket = ""
	if err := os.WriteFile(spec.AgentSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(t.Context(), spec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spec.AgentSocket); !os.IsNotExist(err) {
		t.Fatalf("agent socket left: %v", err)
	}
}
