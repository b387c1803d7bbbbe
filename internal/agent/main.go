package agent

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Program is banger-agent's command name: the banger binary runs Main when
// it is called by that name (the image builder installs banger itself at
// BinaryPath), and cmd/banger-agent is the same program on its own.
const Program = "banger-agent"

// Main is banger-agent's main: it parses args (without the program name),
// serves the virtio-serial port and the vsock port until SIGTERM or
// SIGINT, and returns the process's exit code. build is the build version
// it reports.
func Main(args []string, stdout, stderr io.Writer, build string) int {
	fl := flag.NewFlagSet(Program, flag.ContinueOnError)
	fl.SetOutput(stderr)
	var (
		serial    = fl.String("serial", "", "virtio-serial port to serve (default: the port named "+SerialPortName+")")
		vsockPort = fl.Uint("vsock-port", VsockPort, "vsock port to listen on (0: none)")
		noSerial  = fl.Bool("no-serial", false, "do not serve a virtio-serial port")
		debugLog  = fl.Bool("debug", false, "log debug messages")
		showVer   = fl.Bool("version", false, "print the version and exit")
		// Tests only: an agent of another banger, to check that a host
		// refuses it with a clear error.
		claimProto = fl.Int("claim-protocol", ProtocolVersion, "claim this protocol version (for tests: an agent of another banger)")
	)
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if *showVer {
		fmt.Fprintf(stdout, "%s %s (protocol %d)\n", Program, build, ProtocolVersion)
		return 0
	}
	level := slog.LevelInfo
	if *debugLog {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if err := serveGuest(logger, build, *serial, !*noSerial, uint32(*vsockPort), *claimProto); err != nil {
		logger.Error(Program, "err", err)
		return 1
	}
	return 0
}

func serveGuest(logger *slog.Logger, build, serial string, useSerial bool, vsockPort uint32, proto int) error {
	ctx, stop := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stop()
	srv, err := NewServer(logger, HostSystem{Logger: logger}, build, WithProtocolVersion(proto))
	if err != nil {
		return err
	}
	logger.Info("banger-agent started", "version", build, "protocol", proto)
	var wg sync.WaitGroup
	if useSerial {
		wg.Go(func() { _ = srv.ServeDevice(ctx, serial) })
	}
	if vsockPort != 0 {
		ln, err := ListenVsock(vsockPort)
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
