package main

import (
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// newDrivers is the one place the drivers banger is built with are listed.
// A jailed Firecracker runs as its own per-VM uid (firecracker.Config.UIDBase).
func newDrivers(l layout.Layout) vmm.Registry {
	return vmm.Registry{
		vmm.KindFirecracker: firecracker.New(firecracker.Config{ChrootBase: l.JailDir()}),
		vmm.KindQEMU:        qemu.New(),
	}
}
