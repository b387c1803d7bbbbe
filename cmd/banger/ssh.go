package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/guest"
)

// defaultWaitTimeout bounds the wait for a guest's SSH after a start.
const defaultWaitTimeout = 5 * time.Minute

// sshTarget asks the daemon how to reach ref and loads banger's key.
func sshTarget(ctx context.Context, g *globals, ref string) (guest.Target, ssh.Signer, api.SSHTarget, error) {
	t, err := g.client().SSHTarget(ctx, ref)
	if err != nil {
		return guest.Target{}, nil, t, err
	}
	addr, err := netip.ParseAddrPort(t.Address)
	if err != nil {
		return guest.Target{}, nil, t, fmt.Errorf("daemon gave a bad ssh address %q: %w", t.Address, err)
	}
	key, err := os.ReadFile(t.KeyPath)
	if err != nil {
		return guest.Target{}, nil, t, errdefs.FailedPrecondition("read banger's ssh key %s: %v (hint: run as root)", t.KeyPath, err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		return guest.Target{}, nil, t, fmt.Errorf("parse banger's ssh key %s: %w", t.KeyPath, err)
	}
	return guest.Target{Addr: addr, Name: t.Name, User: t.User}, signer, t, nil
}

func dialVM(ctx context.Context, g *globals, ref string) (*ssh.Client, error) {
	target, signer, t, err := sshTarget(ctx, g, ref)
	if err != nil {
		return nil, err
	}
	return guest.Dial(ctx, target, signer, t.KnownHosts, t.TOFU)
}

// waitSSH waits until ref's SSH server accepts banger's key.
func waitSSH(ctx context.Context, g *globals, ref string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target, signer, t, err := sshTarget(ctx, g, ref)
	if err != nil {
		return err
	}
	return guest.WaitReady(ctx, target, signer, t.KnownHosts, t.TOFU)
}

// guestExit turns a guest command's exit status into the CLI's.
func guestExit(code int) error {
	if code == 0 {
		return nil
	}
	return &cli.ExitError{Code: code}
}

// runInVM runs argv on the VM (a shell with a pty when argv is empty):
// through the daemon and the guest agent when the image has one, else over
// SSH.
func runInVM(ctx context.Context, g *globals, ref string, argv []string, interactive bool) error {
	return runInVMOpts(ctx, g, ref, execOptions{argv: argv, interactive: interactive})
}

func runInVMOpts(ctx context.Context, g *globals, ref string, o execOptions) error {
	var (
		ac   *agent.Client
		user string
		ok   bool
		err  error
	)
	if !o.network {
		if ac, user, ok, err = dialAgent(ctx, g, ref); err != nil {
			return err
		}
	}
	if ok {
		defer ac.Close()
		return runViaAgent(ctx, ac, user, o)
	}
	if o.tty && len(o.argv) > 0 {
		return errdefs.NotSupported("--tty needs the guest agent, and the image of vm %q has none (hint: banger vm ssh %s)", ref, ref)
	}
	argv, interactive := o.argv, o.interactive
	c, err := dialVM(ctx, g, ref)
	if err != nil {
		return err
	}
	defer c.Close()
	var code int
	switch {
	case len(argv) == 0:
		code, err = guest.Shell(ctx, c, os.Stdin, os.Stdout, os.Stderr)
	case interactive:
		code, err = guest.Run(ctx, c, argv, os.Stdin, os.Stdout, os.Stderr)
	default:
		var stdin io.Reader // a terminal is not forwarded to a batch command
		if !term.IsTerminal(int(os.Stdin.Fd())) {
			stdin = os.Stdin
		}
		code, err = guest.Run(ctx, c, argv, stdin, os.Stdout, os.Stderr)
	}
	if err != nil {
		return err
	}
	return guestExit(code)
}

func newVMSSH(g *globals) *cobra.Command {
	var network bool
	cmd := &cobra.Command{
		Use:               "ssh NAME [-- CMD...]",
		Short:             "Open a shell on a VM, or run a command there (host keys pinned, never ignored)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeVMs(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInVMOpts(cmd.Context(), g, args[0], execOptions{argv: args[1:], interactive: true, network: network})
		},
	}
	cmd.Flags().BoolVar(&network, "network", false, "use SSH over the guest's network with banger's key (root only), not the guest agent")
	return cmd
}

func newVMExec(g *globals) *cobra.Command {
	var tty bool
	cmd := &cobra.Command{
		Use:               "exec NAME -- CMD...",
		Short:             "Run a command on a VM: stdout and stderr kept apart, its exit code returned",
		ValidArgsFunction: completeVMs(g, 1),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return errdefs.InvalidArgument("exec needs a VM and a command (hint: banger vm exec NAME -- uname -a)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInVMOpts(cmd.Context(), g, args[0], execOptions{argv: args[1:], tty: tty})
		},
	}
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "run the command on a pseudo-terminal (stdin forwarded; needs the guest agent)")
	return cmd
}

func newVMCp(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories to or from a VM (NAME:/path on one side)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := guest.ParseCopyArgs(args[0], args[1])
			if err != nil {
				return err
			}
			ac, _, ok, err := dialAgent(cmd.Context(), g, spec.VM)
			if err != nil {
				return err
			}
			if ok {
				defer ac.Close()
				if spec.ToGuest {
					return ac.CopyTo(cmd.Context(), spec.Local, spec.Remote)
				}
				return ac.CopyFrom(cmd.Context(), spec.Remote, spec.Local)
			}
			c, err := dialVM(cmd.Context(), g, spec.VM)
			if err != nil {
				return err
			}
			defer c.Close()
			if spec.ToGuest {
				return guest.CopyTo(cmd.Context(), c, spec.Local, spec.Remote)
			}
			return guest.CopyFrom(cmd.Context(), c, spec.Remote, spec.Local)
		},
	}
}
