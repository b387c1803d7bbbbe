package firecracker

import (
	"testing"

	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker/fctest"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

// TestConformance runs the driver suite against Firecracker played by the
// spec-validating double (fctest): a real process, socket and HTTP API,
// every request checked against Firecracker's API specification.
func TestConformance(t *testing.T) {
	vmmtest.RunConformance(t, func(t *testing.T) vmmtest.Target {
		h := newHarness(t, opts{})
		t.Cleanup(h.assertSpecClean)
		return vmmtest.Target{
			Driver:     h.drv,
			Spec:       func(*testing.T) vmm.Spec { return h.spec },
			BootMarker: fctest.ConsoleBoot,
		}
	})
}
