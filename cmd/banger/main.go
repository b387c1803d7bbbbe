// Command banger manages Firecracker and QEMU microVMs through the banger
// daemon; `banger daemon` is the daemon.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/version"
	"github.com/banger-vm/banger/internal/vmm"
)

// Exit codes, one per error class.
const (
	exitOK                 = 0
	exitInternal           = 1
	exitInvalidArgument    = 2
	exitNotFound           = 3
	exitAlreadyExists      = 4
	exitFailedPrecondition = 5
	exitUnavailable        = 6
	exitNotSupported       = 7
	exitOutOfSpace         = 8
	exitPermissionDenied   = 9
)

// exitCode maps an error's class to the process exit code.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	switch errdefs.ClassOf(err) {
	case errdefs.ClassInvalidArgument:
		return exitInvalidArgument
	case errdefs.ClassNotFound:
		return exitNotFound
	case errdefs.ClassAlreadyExists, errdefs.ClassConflict:
		return exitAlreadyExists
	case errdefs.ClassFailedPrecondition:
		return exitFailedPrecondition
	case errdefs.ClassUnavailable:
		return exitUnavailable
	case errdefs.ClassNotSupported:
		return exitNotSupported
	case errdefs.ClassOutOfSpace:
		return exitOutOfSpace
	case errdefs.ClassPermissionDenied:
		return exitPermissionDenied
	}
	return exitInternal
}

// exitError carries an exit code that is not an error class (a guest
// command's own exit status) and is not printed.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the flags every command shares.
type globals struct {
	layout layout.Layout
	output string
	// drivers builds the VMM drivers `banger doctor` checks (newDrivers;
	// a test stands for a host where no VMM can run).
	drivers func(layout.Layout) vmm.Registry
}

func (g *globals) client() *client.Client { return client.New(g.layout.ControlSocket()) }

func newRoot() *cobra.Command {
	return newRootWith(&globals{layout: layout.FromEnv(), drivers: newDrivers})
}

// newRootWith builds the command tree around g, which holds the defaults
// of the shared flags.
func newRootWith(g *globals) *cobra.Command {
	var showVersion bool
	root := &cobra.Command{
		Use:           "banger",
		Short:         "Firecracker and QEMU microVMs, as quick to use as containers",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch g.output {
			case "table", "json":
			default:
				return errdefs.InvalidArgument("--output %q is not one of table, json", g.output)
			}
			var err error
			g.layout, err = g.layout.Abs()
			return err
		},
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if showVersion {
				if len(args) > 0 {
					return errdefs.InvalidArgument("--version takes no arguments, got %q", args)
				}
				return runVersion(cmd, g)
			}
			return runGroup(cmd, args)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.layout.StateDir, "state-dir", g.layout.StateDir, "state directory (env "+layout.EnvStateDir+")")
	pf.StringVar(&g.layout.RuntimeDir, "runtime-dir", g.layout.RuntimeDir, "runtime directory holding the control socket (env "+layout.EnvRuntimeDir+")")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.Flags().BoolVar(&showVersion, "version", false, "print the versions of this CLI and of the daemon (as `banger version`)")
	root.AddCommand(newVMCommand(g), newImageCommand(g), newDaemonCommand(g), newDoctorCommand(g), newVersionCommand(g), newLogPipeCommand())
	applyConventions(root)
	return root
}

func main() {
	// The image builder installs this binary in guests as banger-agent.
	if filepath.Base(os.Args[0]) == agent.Program {
		os.Exit(agent.Main(os.Args[1:], os.Stdout, os.Stderr, version.Get().Version))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee *exitError
		if !errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, "banger:", err)
		}
		os.Exit(exitCode(err))
	}
	os.Exit(exitOK)
}
