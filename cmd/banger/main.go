// Command banger manages Firecracker and QEMU microVMs through the banger
// daemon (cmd/bangerd; `banger daemon` runs it). It links only the client
// side: see TestCLILinksNoDaemon.
package main

import (
	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
)

// globals are the flags every command shares.
type globals struct {
	layout layout.Layout
	output string
}

func (g *globals) client() *client.Client { return client.New(g.layout.ControlSocket()) }

func newRoot() *cobra.Command {
	return newRootWith(&globals{layout: layout.FromEnv()})
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
			return cli.CheckGlobals(g.output, &g.layout)
		},
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if showVersion {
				if len(args) > 0 {
					return errdefs.InvalidArgument("--version takes no arguments, got %q", args)
				}
				return runVersion(cmd, g)
			}
			return cli.RunGroup(cmd, args)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.layout.StateDir, "state-dir", g.layout.StateDir, "state directory (env "+layout.EnvStateDir+")")
	pf.StringVar(&g.layout.RuntimeDir, "runtime-dir", g.layout.RuntimeDir, "runtime directory holding the control socket (env "+layout.EnvRuntimeDir+")")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.Flags().BoolVar(&showVersion, "version", false, "print the versions of this CLI and of the daemon (as `banger version`)")
	root.AddCommand(newVMCommand(g), newImageCommand(g), newDaemonCommand(), newDoctorCommand(), newVersionCommand(g))
	cli.ApplyConventions(root)
	return root
}

func main() {
	cli.Main("banger", newRoot())
}
