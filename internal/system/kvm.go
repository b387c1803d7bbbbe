package system

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// kvmGetAPIVersion is KVM_GET_API_VERSION, _IO(0xAE, 0x00).
const kvmGetAPIVersion = 0xAE00

// KVMUsable reports whether dev (normally /dev/kvm) can run a standard
// guest, and why not. A device node alone is not enough: it must open
// read-write, speak KVM API 12, and be served by a hardware virtualisation
// module (kvm_intel or kvm_amd). Some nested hosts serve /dev/kvm with
// kvm_pvm, which runs only PVM-enabled guest kernels: QEMU's KVM mode
// aborts there and Firecracker cannot boot, so it counts as unusable.
func KVMUsable(dev string) (bool, string) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return false, fmt.Sprintf("%s cannot be opened: %v", dev, err)
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil {
		return false, fmt.Sprintf("%s does not answer KVM_GET_API_VERSION: %v", dev, err)
	}
	if v != 12 {
		return false, fmt.Sprintf("%s speaks KVM API %d, not 12", dev, v)
	}
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			return true, fmt.Sprintf("%s served by %s", dev, m)
		}
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return false, fmt.Sprintf("%s is served by kvm_pvm, which runs only PVM guest kernels (no hardware virtualisation here)", dev)
	}
	return false, fmt.Sprintf("%s has no hardware virtualisation module behind it (kvm_intel or kvm_amd)", dev)
}
