package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/identity"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/logcap"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/server"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
)

type daemonOptions struct {
	nftTable        string
	noNetwork       bool
	mirror          string
	packageCache    string
	maxUserBuild    string // largest image a user other than root may build
	bridge          string
	guestDNS        []string
	logLevel        string
	logFile         string
	socketGroup     string
	guestCIDR       string
	defaultVMM      string
	diskStrategy    string
	gracefulTimeout time.Duration
	configPath      string
	logCap          string // the daemon's own --log-file
	vmLogCap        string // each VM's console and VMM output
}

// Default log caps: a VM's log (vm.log + vm.log.1) and the daemon's own.
const (
	defaultVMLogCap     = "16MiB"
	defaultDaemonLogCap = "64MiB"
)

func newDaemonCommand(g *globals) *cobra.Command {
	o := daemonOptions{}
	cmd := &cobra.Command{
		Use:   "bangerd",
		Short: "The banger daemon (runs as root): it owns all VMs and host resources",
		Long: "bangerd is the banger daemon: it owns all VMs and host resources and serves the banger CLI\n" +
			"on its control socket. `banger daemon [flags]` runs it with the same flags.",
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyConfig(cmd, g, o.configPath); err != nil {
				return err
			}
			return runDaemon(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.configPath, "config", config.DefaultPath, "TOML file setting these flags (keys named like them); flags given here win; a missing default file is fine")
	f.StringVar(&o.logFile, "log-file", "", "append the JSON log to this file instead of stderr (capped by --log-cap)")
	f.StringVar(&o.logCap, "log-cap", defaultDaemonLogCap, "most disk space --log-file may take (the file and one rotated copy, .1)")
	f.StringVar(&o.vmLogCap, "vm-log-cap", defaultVMLogCap, "most disk space each VM's console and VMM log may take (vm.log and vm.log.1); the latest output is kept")
	f.StringVar(&o.socketGroup, "socket-group", "", "group allowed to use the control socket (default: root only)")
	f.StringVar(&o.guestCIDR, "guest-cidr", network.DefaultCIDR, "guest network; the first address is the host's, on the bridge")
	f.StringVar(&o.mirror, "debian-mirror", "", "Debian archive for image builds (default http://deb.debian.org/debian)")
	f.StringVar(&o.maxUserBuild, "max-user-build-size", "8GiB", "largest image a user other than root may build (image build --size)")
	f.StringVar(&o.packageCache, "package-cache", "", "directory keeping downloaded .debs between image builds (default <state-dir>/cache/apt)")
	f.BoolVar(&o.noNetwork, "no-network", false, "leave the host's network alone: no bridge, taps or nftables; VMs get no network device")
	f.StringVar(&o.nftTable, "nft-table", network.DefaultTable, "banger's nftables table (inet family); a second daemon on this host needs its own, with its own --bridge and --guest-cidr")
	f.StringVar(&o.bridge, "bridge", network.DefaultBridge, "the guests' bridge")
	f.StringSliceVar(&o.guestDNS, "guest-dns", nil, "DNS servers for guests (default: this host's non-loopback resolvers, else 1.1.1.1)")
	f.StringVar(&o.defaultVMM, "default-vmm", daemon.AutoVMM, "VMM for VMs created without --vmm: auto, firecracker or qemu")
	f.StringVar(&o.diskStrategy, "disk-strategy", "auto", "root disk strategy for VMs created without --disk-strategy: auto, qcow2, reflink, dm-snapshot or sparse-copy")
	f.DurationVar(&o.gracefulTimeout, "graceful-timeout", daemon.DefaultGracefulTimeout, "how long a stop waits for the guest to power off")
	return cmd
}

func runDaemon(ctx context.Context, g *globals, o daemonOptions) error {
	if os.Geteuid() != 0 {
		return errdefs.FailedPrecondition("bangerd, the banger daemon, must run as root: it manages VMM processes, taps and nftables rules")
	}
	// Whatever umask the daemon was started with, nothing it or its children
	// (VMMs, log forwarders, builders) create is writable by group or others
	// unless a mode says so; every file and socket also gets its mode set.
	syscall.Umask(0o022)
	logCap, err := parseCap("--log-cap", o.logCap)
	if err != nil {
		return err
	}
	vmLogCap, err := parseCap("--vm-log-cap", o.vmLogCap)
	if err != nil {
		return err
	}
	maxUserBuild, err := parseCap("--max-user-build-size", o.maxUserBuild)
	if err != nil {
		return err
	}
	log, closeLog, err := newLogger(o.logLevel, o.logFile, logCap)
	if err != nil {
		return err
	}
	defer closeLog()
	log.Debug("log caps", "vm_log_cap", vmLogCap, "daemon_log_cap", logCap)
	gid := -1
	if o.socketGroup != "" {
		grp, err := user.LookupGroup(o.socketGroup)
		if err != nil {
			return errdefs.InvalidArgument("--socket-group %q: %v", o.socketGroup, err)
		}
		gid, _ = strconv.Atoi(grp.Gid)
	}
	l := g.layout
	if err := l.Ensure(); err != nil {
		return fmt.Errorf("prepare %s and %s: %w", l.StateDir, l.RuntimeDir, err)
	}
	unlock, err := lockStateDir(l)
	if err != nil {
		return err
	}
	defer unlock()

	pool, err := network.NewPool(o.guestCIDR)
	if err != nil {
		return err
	}
	dns, err := guestDNS(o.guestDNS)
	if err != nil {
		return err
	}
	_, authorizedKey, err := identity.EnsureClientKey(l.ClientKey())
	if err != nil {
		return fmt.Errorf("banger's ssh key: %w", err)
	}
	var hostNet daemon.HostNetwork
	if !o.noNetwork {
		netm, err := network.New(network.Config{Bridge: o.bridge, Pool: pool, Table: o.nftTable, Logger: log, GuestDNS: dns})
		if err != nil {
			return err
		}
		defer netm.Close()
		hostNet = netm
	}

	st, err := store.Open(ctx, l.DBPath(), store.WithReserve(l.ReservePath(), store.DefaultReserveBytes, log))
	if err != nil {
		return err
	}
	defer st.Close()
	svc, err := daemon.New(daemon.Config{
		Layout:            l,
		Drivers:           newDrivers(l),
		DefaultVMM:        o.defaultVMM,
		DiskStrategy:      o.diskStrategy,
		GuestCIDR:         o.guestCIDR,
		GracefulTimeout:   o.gracefulTimeout,
		Logger:            log,
		Network:           hostNet,
		GuestDNS:          dns,
		ClientKey:         authorizedKey,
		Mirror:            o.mirror,
		PackageCache:      o.packageCache,
		VMLogCap:          vmLogCap,
		MaxUserBuildBytes: maxUserBuild,
	}, st)
	if err != nil {
		return err
	}
	// Take the socket before touching the host: a second daemon aimed at
	// this runtime dir is refused before it changes anything.
	ln, err := server.Listen(l.ControlSocket(), gid)
	if err != nil {
		return err
	}
	if err := svc.PrepareHost(ctx); err != nil {
		ln.Close()
		return err
	}
	// Serve at once; the drivers' probes and the recovery (reconcile,
	// interrupted operations, orphans) run in the background, and requests
	// that need recovered records wait for it (daemon.Service.Begin).
	recovered := svc.Begin(ctx)
	// Requests run on the daemon's context: SIGTERM cancels them (a build
	// stops and cleans up, a start rolls back; stop, kill and delete are
	// detached and finish) before the store closes.
	srv := server.NewHTTPServer(ctx, server.Handler(svc, log), log, server.DefaultLimits)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("daemon serving", "socket", l.ControlSocket(), "state_dir", l.StateDir, "pid", os.Getpid())

	var exitErr error
serving:
	for {
		select {
		case exitErr = <-errc:
			break serving
		case err := <-recovered:
			recovered = nil
			if err != nil {
				// As before serving: a daemon that cannot recover does not run.
				log.Error("daemon start-up failed", "error", err)
				exitErr = err
				break serving
			}
			log.Info("daemon ready", "socket", l.ControlSocket())
		case <-ctx.Done():
			break serving
		}
	}
	// VMs keep running: they are re-adopted by the next daemon.
	log.Info("daemon stopping; vms keep running")
	// Long enough for a detached stop (graceful timeout, then the kill wait).
	sctx, cancel := context.WithTimeout(context.Background(), o.gracefulTimeout+daemon.DefaultKillTimeout+30*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if rerr := os.Remove(l.ControlSocket()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		log.Warn("could not remove the control socket", "error", rerr)
	}
	if recovered != nil {
		// A recovery still running ends before the store closes.
		if rerr := <-recovered; rerr != nil {
			log.Warn("start-up recovery cut short by the daemon's stop", "error", rerr)
		}
	}
	if exitErr != nil {
		return exitErr
	}
	return err
}

// guestDNS parses --guest-dns, or reads this host's resolvers.
func guestDNS(flag []string) ([]netip.Addr, error) {
	var out []netip.Addr
	if len(flag) > 0 {
		for _, s := range flag {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, errdefs.InvalidArgument("--guest-dns %q is not an IP address", s)
			}
			out = append(out, a)
		}
		return out, nil
	}
	b, _ := os.ReadFile("/etc/resolv.conf")
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() && !a.IsLoopback() {
				out = append(out, a)
			}
		}
	}
	if len(out) == 0 {
		out = append(out, netip.MustParseAddr("1.1.1.1"))
	}
	return out, nil
}

// applyConfig sets the daemon's flags from its config file (see package
// config), then makes the state and runtime dirs absolute again. A flag
// given on the command line, or a dir given by its environment variable,
// wins over the file.
func applyConfig(cmd *cobra.Command, g *globals, path string) error {
	fs := cmd.Flags()
	c, err := config.Load(path, fs.Changed("config"))
	if err != nil {
		return err
	}
	given := func(name string) bool {
		switch name {
		case "state-dir":
			return fs.Changed(name) || os.Getenv(layout.EnvStateDir) != ""
		case "runtime-dir":
			return fs.Changed(name) || os.Getenv(layout.EnvRuntimeDir) != ""
		}
		return fs.Changed(name)
	}
	if err := c.Apply(fs, given, "config", "help", "output"); err != nil {
		return err
	}
	g.layout, err = g.layout.Abs()
	return err
}

// parseCap reads a log cap flag: bytes, or with a binary unit (16MiB, 1G).
func parseCap(flag, s string) (int64, error) {
	n, err := cli.ParseSize(s, 1)
	if err != nil || n < 64<<10 || n > 1<<50 {
		return 0, errdefs.InvalidArgument("%s %q is not a size between 64KiB and 1PiB (e.g. 16MiB)", flag, s)
	}
	return n, nil
}

// newLogger logs JSON to stderr, or to file capped at logCap bytes
// (the file and its rotated copy, file.1), mode 0600 whatever the umask.
func newLogger(level, file string, logCap int64) (*slog.Logger, func(), error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, errdefs.InvalidArgument("--log-level %q: use debug, info, warn or error", level)
	}
	var out io.Writer = os.Stderr
	closer := func() {}
	if file != "" {
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, nil, err
		}
		w, err := logcap.Open(file, logCap)
		if err != nil {
			return nil, nil, err
		}
		out, closer = w, func() { w.Close() }
	}
	return slog.New(slog.NewJSONHandler(out, &slog.HandlerOptions{Level: lv})), closer, nil
}

// lockStateDir makes sure one daemon owns a state dir.
func lockStateDir(l layout.Layout) (func(), error) {
	unlock, err := system.TryLockFile(l.LockFile())
	if errors.Is(err, system.ErrLocked) {
		return nil, errdefs.Conflict("another banger daemon owns %s (hint: stop it, or use another --state-dir)", l.StateDir)
	}
	return unlock, err
}
