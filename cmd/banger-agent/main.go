// banger-agent is banger's guest agent: it serves the host over a
// virtio-serial port (QEMU) and a vsock port (Firecracker). The banger
// binary is the same program when called banger-agent (that is what the
// image builder installs); this command builds it alone:
// CGO_ENABLED=0 go build ./cmd/banger-agent.
package main

import (
	"os"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/version"
)

func main() {
	os.Exit(agent.Main(os.Args[1:], os.Stdout, os.Stderr, version.Get().Version))
}
