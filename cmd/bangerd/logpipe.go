package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/logcap"
	"github.com/banger-vm/banger/internal/vmm"
)

// newLogPipeCommand is the hidden log forwarder the daemon spawns for each
// VMM (see logcap.SpawnForwarder): it copies stdin, the VMM's output, into
// FILE capped at --cap bytes, and exits when the VMM closes the pipe. It
// says on fd 3 whether FILE is open and has room before it reads. Given a
// VMM command after --, it is that VMM's supervisor (vmm.Supervise): its
// parent, forwarding its output, writing how it ended to --exit-file.
func newLogPipeCommand() *cobra.Command {
	var (
		limit    int64
		exitFile string
	)
	cmd := &cobra.Command{
		Use:    logcap.ForwarderCommand + " --cap BYTES [--exit-file F] FILE [-- VMM ARGS...]",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if limit <= 0 {
				return errdefs.InvalidArgument("--cap must be a positive number of bytes")
			}
			ready := os.NewFile(logcap.ReadyFD, "ready")
			if len(args) == 1 {
				return logcap.Forward(os.Stdin, args[0], limit, ready)
			}
			if c.ArgsLenAtDash() != 1 || exitFile == "" {
				return errdefs.InvalidArgument("supervising a vmm takes --exit-file F FILE -- VMM ARGS...")
			}
			return vmm.Supervise(vmm.SuperviseConfig{LogPath: args[0], LogCap: limit, ExitFile: exitFile, Path: args[1], Args: args[2:],
				Ack: os.NewFile(vmm.AckFD, "ack")}, ready)
		},
	}
	cmd.Flags().Int64Var(&limit, "cap", 0, "most bytes FILE and FILE.1 may hold together")
	cmd.Flags().StringVar(&exitFile, "exit-file", "", "with a VMM to run: where to write how it ended")
	return cmd
}
