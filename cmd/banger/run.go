package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/system"
)

func newVMRun(g *globals) *cobra.Command {
	var (
		req         api.CreateVMRequest
		memory      string
		rm          bool
		waitTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run [NAME] [-- CMD...]",
		Short: "Create and start a VM, wait until SSH answers, then run CMD or open a shell",
		Long: "Create and start a VM, wait until SSH answers, then run CMD (or open a shell).\n" +
			"With --rm the VM is deleted afterwards, whatever happened. The exit code is CMD's.",
		Args:              cobra.ArbitraryArgs, // NAME and CMD are told apart by -- in RunE
		ValidArgsFunction: noCompletion,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			argv := args
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				if n > 1 {
					return fmt.Errorf("run takes at most one NAME before --: %w", errInvalid(args[:n]))
				}
				if n == 1 {
					req.Name = args[0]
				}
				argv = args[n:]
			} else if len(args) > 1 {
				return fmt.Errorf("put the command after --: %w", errInvalid(args))
			} else if len(args) == 1 {
				req.Name, argv = args[0], nil
			}
			if req.Name == "" {
				req.Name = "run-" + system.NewID()[:6]
			}
			if err := applyCreateFlags(cmd, &req, memory, ""); err != nil {
				return err
			}
			// Created stopped, so that --rm's delete is in place before
			// the start: a start that fails or is interrupted (Ctrl-C
			// cancels ctx) must not leave the VM behind.
			req.Start = false
			ctx := cmd.Context()
			prog := newStageProgress(os.Stderr)
			event := func(stage, status, detail string) {
				prog.Event(api.BuildEvent{Stage: stage, Status: status, Detail: detail, At: time.Now()})
			}
			event("vm.create", "start", "creating "+req.Name)
			v, err := g.client().CreateVM(ctx, req)
			if err != nil {
				prog.Finish(false)
				return err
			}
			event("vm.create", "done", v.Name)
			if rm {
				defer func() {
					// Delete even when the start or the command failed or
					// ctx was cancelled; the daemon waits for an operation
					// under way on the VM to end first.
					dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
					defer cancel()
					if derr := g.client().DeleteVM(dctx, v.ID); derr != nil {
						fmt.Fprintf(os.Stderr, "banger: delete %s: %v\n", v.Name, derr)
						if err == nil {
							err = derr
						}
					}
				}()
			}
			failed := func(err error) error {
				prog.Finish(false)
				if rm { // the VM and its log are about to go
					return err
				}
				return fmt.Errorf("%w (hint: banger vm logs %s)", err, v.Name)
			}
			event("vm.start", "start", "starting "+v.Name)
			started, err := g.client().StartVM(ctx, v.ID)
			if err != nil {
				return failed(err)
			}
			event("vm.start", "done", fmt.Sprintf("%s running, pid %d, %s", started.Name, started.Runtime.PID, started.GuestIP))
			event("ready", "start", "waiting for the guest agent or "+started.GuestIP+":22")
			if err := waitReady(ctx, g, v.ID, waitTimeout); err != nil {
				return failed(err)
			}
			event("ready", "done", "ready")
			prog.Finish(true)
			return runInVM(ctx, g, v.ID, argv, true)
		},
	}
	addCreateFlags(g, cmd, &req, &memory, nil)
	cmd.Flags().BoolVar(&rm, "rm", false, "delete the VM when CMD or the shell ends")
	cmd.Flags().DurationVar(&waitTimeout, "wait-timeout", defaultWaitTimeout, "how long to wait for SSH")
	return cmd
}
