// Package testutil holds the opt-in gates for tests that need root, host
// tools or real VMs. Without the opt-in such tests skip (go test ./... stays
// safe anywhere); with it they FAIL when the host is not ready, naming what
// is missing, so a CI run can never pass by skipping.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// EnvVMTests opts in to tests that need root, host tools and real guests.
// The README's test command sets it.
const EnvVMTests = "BANGER_VM_TESTS"

// OptedIn reports whether the real-host tests were asked for.
func OptedIn() bool { return os.Getenv(EnvVMTests) == "1" }

func gate(t testing.TB, why string) {
	t.Helper()
	if !OptedIn() {
		t.Skipf("needs %s: set %s=1 to run (the README's test command does)", why, EnvVMTests)
	}
}

// RequireRoot gates a test that must run as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	gate(t, "root")
	if os.Geteuid() != 0 {
		t.Fatalf("%s=1 but not running as root: run the test command as root", EnvVMTests)
	}
}

// RequireTools gates a test on host commands being installed.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	gate(t, "host tools")
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s=1 but %s is not installed (hint: run the README's test command, which installs it)", EnvVMTests, tool)
		}
	}
}

// RequireVMs gates a test that boots real guests with QEMU.
func RequireVMs(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "qemu-system-x86_64", "mkfs.ext4", "e2fsck", "resize2fs", "apt-get", "dpkg-deb")
}
