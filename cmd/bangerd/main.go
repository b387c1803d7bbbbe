// Command bangerd is the banger daemon: it owns every VM and host resource
// and serves the banger CLI on a unix socket. `banger daemon` runs it. It
// is also what the daemon re-executes itself as (a VMM's log forwarder and
// supervisor, hidden) and what images get as banger-agent.
package main

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/version"
	"github.com/banger-vm/banger/internal/vmm"
)

// globals are the flags the daemon and its subcommands share.
type globals struct {
	layout layout.Layout
	output string // doctor's format
	// drivers builds the VMM drivers (newDrivers; a test stands for a
	// host where no VMM can run).
	drivers func(layout.Layout) vmm.Registry
}

func newRoot() *cobra.Command {
	return newRootWith(&globals{layout: layout.FromEnv(), drivers: newDrivers})
}

// newRootWith builds the command tree around g, which holds the defaults
// of the shared flags: the root runs the daemon.
func newRootWith(g *globals) *cobra.Command {
	root := newDaemonCommand(g)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		return cli.CheckGlobals(g.output, &g.layout)
	}
	root.SilenceUsage, root.SilenceErrors = true, true
	root.CompletionOptions.DisableDefaultCmd = true
	pf := root.PersistentFlags()
	pf.StringVar(&g.layout.StateDir, "state-dir", g.layout.StateDir, "state directory (env "+layout.EnvStateDir+")")
	pf.StringVar(&g.layout.RuntimeDir, "runtime-dir", g.layout.RuntimeDir, "runtime directory holding the control socket (env "+layout.EnvRuntimeDir+")")
	pf.StringVarP(&g.output, "output", "o", "table", "doctor's output format: table or json")
	root.AddCommand(newDoctorCommand(g), newLogPipeCommand())
	cli.ApplyConventions(root)
	return root
}

func main() {
	// Image builds install this binary in guests as banger-agent.
	if filepath.Base(os.Args[0]) == agent.Program {
		os.Exit(agent.Main(os.Args[1:], os.Stdout, os.Stderr, version.Get().Version))
	}
	cli.Main("bangerd", newRoot())
}
