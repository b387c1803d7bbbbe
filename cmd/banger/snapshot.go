package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
)

// Pause, resume, snapshots and restore (issue 12).

func newVMPause(g *globals) *cobra.Command {
	return vmAction(g, "pause", "Freeze running VMs in place (their VMM and memory stay)", func(cmd *cobra.Command, ref string) (api.VM, error) {
		return g.client().PauseVM(cmd.Context(), ref)
	})
}

func newVMResume(g *globals) *cobra.Command {
	return vmAction(g, "resume", "Let paused VMs run again", func(cmd *cobra.Command, ref string) (api.VM, error) {
		return g.client().ResumeVM(cmd.Context(), ref)
	})
}

func newVMRestore(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "restore NAME SNAPSHOT",
		Short: "Take a VM back to a snapshot's instant (its disk and running processes); a running VM is discarded first",
		Args:  cobra.ExactArgs(2),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return completeVMs(g, 1)(cmd, args, toComplete)
			}
			return completeSnapshots(g, 2)(cmd, args, toComplete)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := g.client().RestoreVM(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return renderVM(cmd.OutOrStdout(), g.output, v)
		},
	}
}

func newVMSnapshot(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Aliases: []string{"snap"}, Short: "Save, list, show and delete VM snapshots"}
	cmd.AddCommand(newSnapshotCreate(g), newSnapshotList(g), newSnapshotShow(g), newSnapshotDelete(g))
	return cmd
}

func newSnapshotCreate(g *globals) *cobra.Command {
	var (
		req   api.CreateSnapshotRequest
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "create VM [NAME]",
		Short: "Save a running or paused VM's memory, devices and disk (the VM goes on, or stops with --stop)",
		Args:  cobra.RangeArgs(1, 2),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return completeVMs(g, 1)(cmd, args, toComplete)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 2 {
				req.Name = args[1]
			}
			sn, err := g.client().CreateSnapshot(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(cmd.OutOrStdout(), sn.Name)
				return nil
			}
			return renderSnapshot(cmd.OutOrStdout(), g.output, sn)
		},
	}
	cmd.Flags().BoolVar(&req.Stop, "stop", false, "stop the VM once saved (its VMM is killed: the snapshot holds its state) instead of resuming it")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the snapshot's name")
	return cmd
}

func newSnapshotList(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots",
		Args:    cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sns, err := g.client().ListSnapshots(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				for _, sn := range sns {
					fmt.Fprintln(cmd.OutOrStdout(), sn.Name)
				}
				return nil
			}
			return renderSnapshots(cmd.OutOrStdout(), g.output, sns)
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only names")
	return cmd
}

func newSnapshotShow(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "show SNAPSHOT",
		Short:             "Show a snapshot",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeSnapshots(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sn, err := g.client().GetSnapshot(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return renderSnapshot(cmd.OutOrStdout(), g.output, sn)
		},
	}
}

func newSnapshotDelete(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "delete SNAPSHOT...",
		Aliases:           []string{"rm"},
		Short:             "Delete snapshots and their files",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeSnapshots(g, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachRef(cmd, args, func(ref string) error {
				if err := g.client().DeleteSnapshot(cmd.Context(), ref); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), ref)
				return nil
			})
		},
	}
}

// completeSnapshots completes snapshot names at argument positions below
// max (0: all), leaving out those already given.
func completeSnapshots(g *globals, max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		sns, err := g.client().ListSnapshots(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var out []cobra.Completion
		for _, sn := range sns {
			if strings.HasPrefix(sn.Name, toComplete) {
				out = append(out, cobra.CompletionWithDesc(sn.Name, "of "+sn.VMName))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func renderSnapshots(w io.Writer, format string, sns []api.Snapshot) error {
	if format == "json" {
		return cli.WriteJSON(w, sns)
	}
	t := cli.Table(w)
	fmt.Fprintln(t, "NAME\tID\tKIND\tVM\tVMM\tVCPUS\tMEMORY\tSIZE\tCREATED")
	for _, sn := range sns {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\n", sn.Name, short(sn.ID), dash(sn.Kind), sn.VMName, sn.VMM, sn.VCPUs, sn.MemoryMiB,
			bytesIEC(sn.SizeBytes), sn.CreatedAt.Local().Format("2006-01-02 15:04:05"))
	}
	return t.Flush()
}

func renderSnapshot(w io.Writer, format string, sn api.Snapshot) error {
	if format == "json" {
		return cli.WriteJSON(w, sn)
	}
	t := cli.Table(w)
	row := func(k, val string) { fmt.Fprintf(t, "%s:\t%s\n", k, val) }
	row("Name", sn.Name)
	row("ID", sn.ID)
	row("Kind", dash(sn.Kind))
	row("VM", fmt.Sprintf("%s (%s)", sn.VMName, short(sn.VMID)))
	row("Image", fmt.Sprintf("%s (%s)", dash(sn.Image), short(sn.ImageID)))
	row("VMM", sn.VMM)
	row("vCPUs", fmt.Sprint(sn.VCPUs))
	row("Memory", fmt.Sprintf("%d MiB", sn.MemoryMiB))
	row("Kernel", sn.Kernel)
	row("Size", bytesIEC(sn.SizeBytes))
	row("Dir", sn.Dir)
	row("Created", sn.CreatedAt.Local().Format("2006-01-02 15:04:05 MST"))
	return t.Flush()
}

func newVMFork(g *globals) *cobra.Command {
	var req api.ForkVMRequest
	cmd := &cobra.Command{
		Use:   "fork VM NEW",
		Short: "Snapshot a running VM and start NEW from that instant, with its own name, address, MAC, machine ID and host keys",
		Long: "Snapshot a running (or paused) VM and start a new VM from that instant: its processes go on in the new VM,\n" +
			"which gets its own identity through the guest agent before anyone can reach it. The source VM goes on.\n" +
			"The snapshot is deleted once the fork runs, unless --snapshot names it (then it is kept, and more forks can be made\n" +
			"from it with vm create NAME --from SNAPSHOT).",
		Args: cobra.ExactArgs(2),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			return completeVMs(g, 1)(cmd, args, toComplete)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[1]
			v, err := g.client().ForkVM(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return renderVM(cmd.OutOrStdout(), g.output, v)
		},
	}
	cmd.Flags().StringVar(&req.Snapshot, "snapshot", "", "keep the snapshot taken on the way, under this name")
	return cmd
}

func newImageWarm(g *globals) *cobra.Command {
	var (
		req    api.WarmImageRequest
		memory string
	)
	cmd := &cobra.Command{
		Use:   "warm IMAGE",
		Short: "Boot an image once and keep a snapshot of it: vm create and vm run of that shape then restore it instead of booting",
		Long: "Boot IMAGE once in a VM of the given shape (the defaults of vm create), wait until it has finished booting,\n" +
			"snapshot it and delete the VM. vm create and vm run of that image, driver, vCPUs, memory and disk size then\n" +
			"restore the snapshot and give the guest the new VM's identity through its agent, instead of booting\n" +
			"(--cold boots). Warming again replaces the snapshot; it is deleted with the image, or with vm snapshot delete.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeImages(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if memory != "" {
				b, err := cli.ParseSize(memory, 1<<20)
				if err != nil {
					return err
				}
				req.MemoryMiB = int(b >> 20)
			}
			sn, err := g.client().WarmImage(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return renderSnapshot(cmd.OutOrStdout(), g.output, sn)
		},
	}
	cmd.Flags().IntVar(&req.VCPUs, "cpus", 0, "virtual CPUs (default 2)")
	cmd.Flags().StringVar(&memory, "memory", "", "memory, e.g. 512M or 2G (default 1G)")
	cmd.Flags().StringVar(&req.VMM, "vmm", "", "VMM: auto, firecracker or qemu (default: the daemon's, auto)")
	return cmd
}

func newVMReidentify(g *globals) *cobra.Command {
	var req api.ReidentifyRequest
	cmd := &cobra.Command{
		Use:   "reidentify VM",
		Short: "Give a running VM's guest new SSH host keys and machine ID (and with --new-ip a new address) through its agent",
		Long: "Give a running VM's guest new SSH host keys and a new machine ID through its guest agent, and with --new-ip\n" +
			"a new address: banger pins the keys the agent answers with (the old pins go), moves the VM's firewall\n" +
			"rules and published ports to the new address, and keeps all of it for the VM's later boots.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeVMs(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := g.client().ReidentifyVM(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return renderVM(cmd.OutOrStdout(), g.output, v)
		},
	}
	cmd.Flags().BoolVar(&req.NewIP, "new-ip", false, "lease a new guest IP and move the guest to it")
	return cmd
}
