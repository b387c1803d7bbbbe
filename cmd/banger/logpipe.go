package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/logcap"
)

// newLogPipeCommand is the hidden log forwarder the daemon spawns for each
// VMM (see logcap.SpawnForwarder): it copies stdin, the VMM's output, into
// FILE capped at --cap bytes, and exits when the VMM closes the pipe. It
// says on fd 3 whether FILE is open and has room before it reads.
func newLogPipeCommand() *cobra.Command {
	var limit int64
	cmd := &cobra.Command{
		Use:    logcap.ForwarderCommand + " --cap BYTES FILE",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if limit <= 0 {
				return errdefs.InvalidArgument("--cap must be a positive number of bytes")
			}
			return logcap.Forward(os.Stdin, args[0], limit, os.NewFile(logcap.ReadyFD, "ready"))
		},
	}
	cmd.Flags().Int64Var(&limit, "cap", 0, "most bytes FILE and FILE.1 may hold together")
	return cmd
}
