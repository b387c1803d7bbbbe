// banger-agent is banger's guest agent: it serves the host over a
// virtio-serial port (QEMU) and a vsock port (Firecracker). Build it
// static: CGO_ENABLED=0 go build ./cmd/banger-agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	var (
		serial    = flag.String("serial", "", "virtio-serial port to serve (default: the port named "+agent.SerialPortName+")")
		vsockPort = flag.Uint("vsock-port", agent.VsockPort, "vsock port to listen on (0: none)")
		noSerial  = flag.Bool("no-serial", false, "do not serve a virtio-serial port")
		debugLog  = flag.Bool("debug", false, "log debug messages")
		showVer   = flag.Bool("version", false, "print the version and exit")
	)
	flag.Parse()
	if *showVer {
		fmt.Printf("banger-agent %s (protocol %d)\n", buildVersion(), agent.ProtocolVersion)
		return
	}
	level := slog.LevelInfo
	if *debugLog {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if err := run(logger, *serial, !*noSerial, uint32(*vsockPort)); err != nil {
		logger.Error("banger-agent", "err", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger, serial string, useSerial bool, vsockPort uint32) error {
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	srv, err := agent.NewServer(logger, agent.HostSystem{Logger: logger}, buildVersion())
	if err != nil {
		return err
	}
	logger.Info("banger-agent started", "version", buildVersion(), "protocol", agent.ProtocolVersion)
	var wg sync.WaitGroup
	if useSerial {
		wg.Go(func() { _ = srv.ServeDevice(ctx, serial) })
	}
	if vsockPort != 0 {
		ln, err := agent.ListenVsock(vsockPort)
		if err != nil {
			// QEMU guests have no vsock here: the serial port serves.
			logger.Info("no vsock", "err", err)
		} else {
			wg.Go(func() { _ = srv.ServeListener(ctx, ln) })
		}
	}
	wg.Wait()
	return nil
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return "dev-" + s.Value
			}
		}
	}
	return version
}
