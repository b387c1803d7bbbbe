package main

import (
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// newDrivers is the one place the drivers banger is built with are listed.
func newDrivers(l layout.Layout) vmm.Registry {
	return vmm.Registry{
		vmm.KindQEMU: qemu.New(),
	}
}
