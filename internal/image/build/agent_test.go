package build

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/testutil"
)

// TestInstallAgent: the binary lands at agent.BinaryPath, 0755 whatever
// the umask, the unit is enabled for sysinit.target, and the manifest
// records the agent with its checksum.
func TestInstallAgent(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "banger")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	b := &builder{spec: Spec{AgentBinary: bin}, root: filepath.Join(dir, "root"), manifest: &Manifest{}}
	if err := os.MkdirAll(filepath.Join(b.root, "etc/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := b.installAgent(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(b.root, agent.BinaryPath))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("agent binary: %v %v", fi, err)
	}
	unit, err := os.ReadFile(filepath.Join(b.root, agent.UnitPath))
	if err != nil || string(unit) != agent.SystemdUnit {
		t.Fatalf("unit: %v", err)
	}
	link, err := os.Readlink(filepath.Join(b.root, "etc/systemd/system/sysinit.target.wants", agent.UnitName))
	if err != nil || link != agent.UnitPath {
		t.Fatalf("unit not enabled: %q %v", link, err)
	}
	a := b.manifest.Agent
	if a == nil || a.Protocol != agent.ProtocolVersion || a.Path != agent.BinaryPath || len(a.SHA256) != 64 {
		t.Fatalf("manifest agent %+v", a)
	}
	// No binary given: no agent, nothing recorded.
	b2 := &builder{root: t.TempDir(), manifest: &Manifest{}}
	if err := b2.installAgent(); err != nil || b2.manifest.Agent != nil {
		t.Fatalf("without a binary: %v %+v", err, b2.manifest.Agent)
	}
}
