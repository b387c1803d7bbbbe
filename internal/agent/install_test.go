package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/testutil"
)

// systemd accepts the unit the image builder installs (ExecStart pointed
// at a binary that exists here).
func TestSystemdUnitVerifies(t *testing.T) {
	testutil.RequireTools(t, "systemd-analyze")
	if !strings.Contains(SystemdUnit, "ExecStart="+BinaryPath+"\n") {
		t.Fatalf("unit does not start %s:\n%s", BinaryPath, SystemdUnit)
	}
	p := filepath.Join(t.TempDir(), UnitName)
	unit := strings.Replace(SystemdUnit, BinaryPath, "/bin/true", 1)
	if err := os.WriteFile(p, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", p).CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
