package main

import (
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker"
	"github.com/banger-vm/banger/internal/vmm/qemu"
)

// jailID is the unprivileged uid and gid a jailed Firecracker runs as
// ("nobody" on Debian).
const jailID = 65534

// newDrivers is the one place the drivers banger is built with are listed.
func newDrivers(l layout.Layout) vmm.Registry {
	return vmm.Registry{
		vmm.KindFirecracker: firecracker.New(firecracker.Config{ChrootBase: l.JailDir(), UID: jailID, GID: jailID}),
		vmm.KindQEMU:        qemu.New(),
	}
}
