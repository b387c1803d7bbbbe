package main

import (
	"bufio"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
)

func newVMCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, run and manage VMs"}
	cmd.AddCommand(
		newVMCreate(g), newVMStart(g), newVMStop(g), newVMKill(g), newVMRestart(g),
		newVMDelete(g), newVMList(g), newVMShow(g), newVMLogs(g), newVMOps(g),
		newVMRun(g), newVMSSH(g), newVMExec(g), newVMCp(g),
		newVMPause(g), newVMResume(g), newVMSnapshot(g), newVMRestore(g), newVMFork(g), newVMReidentify(g), newVMSet(g),
	)
	return cmd
}

func newVMCreate(g *globals) *cobra.Command {
	var (
		req          api.CreateVMRequest
		memory, disk string
		quiet        bool
	)
	cmd := &cobra.Command{
		Use:               "create NAME",
		Short:             "Create a VM (stopped, unless --start)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: noCompletion,
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			if err := applyCreateFlags(cmd, &req, memory, disk); err != nil {
				return err
			}
			v, err := g.client().CreateVM(cmd.Context(), req)
			if err != nil {
				return err
			}
			if quiet {
				fmt.Fprintln(cmd.OutOrStdout(), v.ID)
				return nil
			}
			return renderVM(cmd.OutOrStdout(), g.output, v)
		},
	}
	addCreateFlags(g, cmd, &req, &memory, &disk)
	cmd.Flags().BoolVar(&req.Start, "start", false, "start the VM once created")
	cmd.Flags().StringVar(&req.From, "from", "", "make the VM a fork of this snapshot: its first start restores it with the VM's own identity (shape, image and disk are the snapshot's)")
	_ = cmd.RegisterFlagCompletionFunc("from", completeSnapshots(g, 0))
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the VM's id")
	return cmd
}

// addCreateFlags declares the flags create and run share; disk may be nil.
func addCreateFlags(g *globals, cmd *cobra.Command, req *api.CreateVMRequest, memory, disk *string) {
	f := cmd.Flags()
	f.StringVar(&req.Image, "image", "", "image name or id (default: the default image)")
	_ = cmd.RegisterFlagCompletionFunc("image", completeImages(g, 0))
	_ = cmd.RegisterFlagCompletionFunc("vmm", cobra.FixedCompletions([]cobra.Completion{"auto", "firecracker", "qemu"}, cobra.ShellCompDirectiveNoFileComp))
	f.IntVar(&req.VCPUs, "cpus", 0, "virtual CPUs (default 2)")
	f.StringVar(memory, "memory", "", "memory, e.g. 512M or 2G (default 1G)")
	if disk != nil {
		f.StringVar(disk, "disk-size", "", "root disk size, e.g. 4G (default: the image's)")
	}
	f.StringVar(&req.VMM, "vmm", "", "VMM: auto, firecracker or qemu (default: the daemon's, auto)")
	f.StringArrayVarP(&req.Publish, "publish", "p", nil, "publish a guest port while the VM runs: HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable)")
	f.StringVar(&req.DiskStrategy, "disk-strategy", "", "root disk strategy: auto, qcow2, reflink, dm-snapshot or sparse-copy (default: the daemon's)")
	_ = cmd.RegisterFlagCompletionFunc("disk-strategy", cobra.FixedCompletions([]cobra.Completion{"auto", "qcow2", "reflink", "dm-snapshot", "sparse-copy"}, cobra.ShellCompDirectiveNoFileComp))
	f.BoolVar(&req.Cold, "cold", false, "boot the image even if it has a warm snapshot of this shape (see image warm)")
	addNetworkFlags(cmd, &req.Network)
}

// applyCreateFlags checks and converts what addCreateFlags declared.
func applyCreateFlags(cmd *cobra.Command, req *api.CreateVMRequest, memory, disk string) error {
	if cmd.Flags().Changed("cpus") && req.VCPUs <= 0 {
		return errdefs.InvalidArgument("--cpus %d: a VM needs at least one vCPU", req.VCPUs)
	}
	if memory != "" {
		b, err := cli.ParseSize(memory, 1<<20)
		if err != nil {
			return err
		}
		if b < 1<<20 {
			return errdefs.InvalidArgument("--memory %q is less than 1 MiB (hint: e.g. 512M or 2G)", memory)
		}
		req.MemoryMiB = int(b >> 20)
	}
	if disk != "" {
		b, err := cli.ParseSize(disk, 1<<20)
		if err != nil {
			return err
		}
		if b == 0 {
			return errdefs.InvalidArgument("--disk-size %q is zero", disk)
		}
		req.DiskBytes = b
	}
	return nil
}

func errInvalid(args []string) error {
	return errdefs.InvalidArgument("unexpected arguments %q (hint: banger vm run [NAME] [flags] -- CMD...)", args)
}

// eachRef runs fn for every VM named on the command line. With one VM its
// error is the command's; with several, each failure is printed and the
// command exits with the first failure's code after trying them all.
func eachRef(cmd *cobra.Command, refs []string, fn func(ref string) error) error {
	if len(refs) == 1 {
		return fn(refs[0])
	}
	var first error
	for _, ref := range refs {
		if err := fn(ref); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "banger: %s: %v\n", ref, err)
			if first == nil {
				first = &cli.ExitError{Code: cli.ExitCode(err)}
			}
		}
	}
	return first
}

// vmAction is the shape of start, stop, restart and kill (and of any
// command acting on VMs named on the command line: it completes their
// names). With one NAME it prints the VM; with several, their names, or
// with -o json an array of the VMs it acted on.
func vmAction(g *globals, use, short string, do func(cmd *cobra.Command, ref string) (api.VM, error)) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:               use + " NAME...",
		Short:             short,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeVMs(g, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			var done []api.VM
			err := eachRef(cmd, args, func(ref string) error {
				v, err := do(cmd, ref)
				if err != nil {
					return err
				}
				switch {
				case quiet:
					fmt.Fprintln(cmd.OutOrStdout(), v.Name)
				case len(args) == 1:
					return renderVM(cmd.OutOrStdout(), g.output, v)
				case g.output == "json":
					done = append(done, v)
				default:
					fmt.Fprintln(cmd.OutOrStdout(), v.Name)
				}
				return nil
			})
			if done != nil {
				if jerr := cli.WriteJSON(cmd.OutOrStdout(), done); jerr != nil && err == nil {
					err = jerr
				}
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the VM's name")
	return cmd
}

func newVMStart(g *globals) *cobra.Command {
	var (
		wait        bool
		waitTimeout time.Duration
	)
	cmd := vmAction(g, "start", "Start VMs (a running VM is left as is)", func(cmd *cobra.Command, ref string) (api.VM, error) {
		v, err := g.client().StartVM(cmd.Context(), ref)
		if err != nil || !wait {
			return v, err
		}
		if err := waitReady(cmd.Context(), g, v.ID, waitTimeout); err != nil {
			return v, fmt.Errorf("%w (hint: banger vm logs %s)", err, v.Name)
		}
		return v, nil
	})
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the VM's guest agent (or, without one, its SSH server) answers")
	cmd.Flags().DurationVar(&waitTimeout, "wait-timeout", defaultWaitTimeout, "how long --wait waits")
	return cmd
}

func newVMStop(g *globals) *cobra.Command {
	var timeout time.Duration
	var force bool
	cmd := vmAction(g, "stop", "Shut VMs down gracefully (Ctrl-Alt-Del), forcing them after --timeout", func(cmd *cobra.Command, ref string) (api.VM, error) {
		return g.client().StopVM(cmd.Context(), ref, timeout, force)
	})
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long the guest gets to power off (default: the daemon's, 30s)")
	cmd.Flags().BoolVar(&force, "force", false, "kill the VM if the shutdown request cannot be sent (default: fail and leave it running)")
	return cmd
}

func newVMRestart(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := vmAction(g, "restart", "Stop then start VMs", func(cmd *cobra.Command, ref string) (api.VM, error) {
		return g.client().RestartVM(cmd.Context(), ref, timeout)
	})
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long the guest gets to power off (default: the daemon's, 30s)")
	return cmd
}

func newVMKill(g *globals) *cobra.Command {
	var signal string
	cmd := vmAction(g, "kill", "Signal VMs' VMM processes (default TERM) and clean up", func(cmd *cobra.Command, ref string) (api.VM, error) {
		return g.client().KillVM(cmd.Context(), ref, signal)
	})
	cmd.Flags().StringVarP(&signal, "signal", "s", "TERM", "signal to send, e.g. TERM, KILL, INT")
	return cmd
}

func newVMDelete(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "delete NAME...",
		Aliases:           []string{"rm"},
		Short:             "Delete VMs: stop them if they run, remove their disks and records",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeVMs(g, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachRef(cmd, args, func(ref string) error {
				if err := g.client().DeleteVM(cmd.Context(), ref); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), ref)
				return nil
			})
		},
	}
}

func newVMList(g *globals) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vms, err := g.client().ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if quiet {
				// One write, not one per VM.
				w := bufio.NewWriter(cmd.OutOrStdout())
				for _, v := range vms {
					fmt.Fprintln(w, v.ID)
				}
				return w.Flush()
			}
			return renderVMs(cmd.OutOrStdout(), g.output, vms)
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only ids")
	return cmd
}

func newVMShow(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:               "show NAME",
		Aliases:           []string{"inspect"},
		Short:             "Show a VM, with its last operation",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeVMs(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := g.client().GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return renderVM(cmd.OutOrStdout(), g.output, v)
		},
	}
}

func newVMOps(g *globals) *cobra.Command {
	var (
		limit int
		quiet bool
	)
	cmd := &cobra.Command{
		Use:               "ops NAME",
		Short:             "List a VM's operations, newest first, with their stages",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeVMs(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return errdefs.InvalidArgument("--limit %d is negative", limit)
			}
			ops, err := g.client().Operations(cmd.Context(), args[0], limit)
			if err != nil {
				return err
			}
			if quiet {
				for _, op := range ops {
					fmt.Fprintln(cmd.OutOrStdout(), op.ID)
				}
				return nil
			}
			return renderOps(cmd.OutOrStdout(), g.output, ops)
		},
	}
	cmd.Flags().IntVarP(&limit, "limit", "n", 0, "show only the newest N operations")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the operations' ids")
	return cmd
}

func newVMLogs(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:               "logs NAME",
		Short:             "Print a VM's console and VMM log",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeVMs(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.client().Logs(cmd.Context(), args[0], follow, os.Stdout)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing while the VM runs")
	return cmd
}
