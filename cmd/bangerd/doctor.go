package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/internal/doctor"
)

func newDoctorCommand(g *globals) *cobra.Command {
	var bridge string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what banger needs from this host, with a fix for each problem",
		Long: "Checks KVM, the VMM binaries, image-building tools, networking and the daemon's socket,\n" +
			"and says which driver `auto` picks and why. Exits 5 when no VM can run here.",
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := doctor.Run(cmd.Context(), doctor.Options{Layout: g.layout, Drivers: g.drivers(g.layout), Bridge: bridge})
			if err := renderDoctor(cmd.OutOrStdout(), g.output, r); err != nil {
				return err
			}
			if !r.CanRunVMs {
				return &cli.ExitError{Code: cli.ExitFailedPrecondition}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&bridge, "bridge", "banger0", "the daemon's bridge")
	return cmd
}

func renderDoctor(w io.Writer, format string, r doctor.Report) error {
	if format == "json" {
		return cli.WriteJSON(w, r)
	}
	t := cli.Table(w)
	for _, c := range r.Checks {
		fmt.Fprintf(t, "%s\t%s\t%s\n", c.Status, c.Name, c.Detail)
		if c.Hint != "" && c.Status != doctor.OK {
			fmt.Fprintf(t, "\t\thint: %s\n", c.Hint)
		}
	}
	if err := t.Flush(); err != nil {
		return err
	}
	if r.CanRunVMs {
		fmt.Fprintf(w, "\nVMs will run with %s (%s).\n", r.AutoVMM, r.AutoReason)
		if r.AutoDisk != "" {
			fmt.Fprintf(w, "Their root disks will be %s (%s).\n", r.AutoDisk, r.AutoDiskReason)
		}
	} else {
		fmt.Fprintln(w, "\nNo VMM can run VMs on this host.")
	}
	return nil
}
