// Package cli holds what banger's two commands share: the conventions of
// their cobra trees, the exit code of each error class, and the JSON and
// table output primitives. It is light: the CLI links it.
package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
)

// ApplyConventions gives every command of the tree the CLI's rules, so a
// command added later gets them without asking:
//
//   - a command group (a command with subcommands and nothing to run of its
//     own) prints its help when called alone and refuses anything else with
//     exit 2, naming the closest subcommand when there is one;
//   - a leaf command that declares no Args takes none;
//   - a wrong argument count, a missing required flag or a flag that does not
//     parse (`--cpus abc`) is an invalid argument (exit 2) whose message
//     names the command and its usage.
//
// It runs on the finished tree, after the default help and completion
// commands are added, so they follow the rules too.
func ApplyConventions(root *cobra.Command) {
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [COMMAND...]",
		Short: "Help about any command",
		Args:  cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil {
				return err
			}
			if len(rest) > 0 {
				return unknownCommand(cmd, rest[0])
			}
			return cmd.Help()
		},
	})
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return errdefs.InvalidArgument("%v (hint: see '%s --help')", err, cmd.CommandPath())
	})
	Walk(root, func(c *cobra.Command) {
		if c.SuggestionsMinimumDistance <= 0 {
			c.SuggestionsMinimumDistance = 2
		}
		switch {
		case c.HasSubCommands() && !c.Runnable():
			c.Args = cobra.ArbitraryArgs
			c.RunE = RunGroup
		case c.Args == nil:
			c.Args = NoArgs
		}
		c.Args = usageArgs(c.Args)
	})
}

// NoArgs is cobra.NoArgs with a message that says what was wrong.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return errdefs.InvalidArgument("%s takes no arguments, got %q (usage: %s)", cmd.CommandPath(), args, strings.TrimSuffix(cmd.UseLine(), " [flags]"))
	}
	return nil
}

// Walk calls fn on c and every command under it.
func Walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		Walk(sub, fn)
	}
}

// RunGroup is what a command group runs: its help when called alone.
func RunGroup(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	return unknownCommand(cmd, args[0])
}

// unknownCommand is the error for a word that names no subcommand of cmd.
func unknownCommand(cmd *cobra.Command, name string) error {
	hint := fmt.Sprintf("see '%s --help' for its commands", cmd.CommandPath())
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		hint = fmt.Sprintf("did you mean '%s %s'?", cmd.CommandPath(), s[0])
	}
	return errdefs.InvalidArgument("unknown command %q for %q (hint: %s)", name, cmd.CommandPath(), hint)
}

// usageArgs wraps an argument validator: its error becomes an invalid
// argument naming the usage. It also checks required flags and flag groups
// here, where cobra would otherwise report them unclassed (exit 1).
func usageArgs(validate cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := validate(cmd, args); err != nil {
			if errdefs.ClassOf(err) == errdefs.ClassInvalidArgument {
				return err
			}
			if cmd.HasSubCommands() && len(args) > 0 {
				return unknownCommand(cmd, args[0])
			}
			return errdefs.InvalidArgument("%s: %v (usage: %s)", cmd.CommandPath(), err, strings.TrimSuffix(cmd.UseLine(), " [flags]"))
		}
		if err := cmd.ValidateRequiredFlags(); err != nil {
			return errdefs.InvalidArgument("%s: %v (usage: %s)", cmd.CommandPath(), err, strings.TrimSuffix(cmd.UseLine(), " [flags]"))
		}
		if err := cmd.ValidateFlagGroups(); err != nil {
			return errdefs.InvalidArgument("%s: %v (hint: see '%s --help')", cmd.CommandPath(), err, cmd.CommandPath())
		}
		return nil
	}
}

// CheckGlobals is the pre-run both binaries' roots share: the --output
// value must be a format they print, and the layout's dirs become
// absolute.
func CheckGlobals(output string, l *layout.Layout) error {
	switch output {
	case "table", "json":
	default:
		return errdefs.InvalidArgument("--output %q is not one of table, json", output)
	}
	abs, err := l.Abs()
	if err != nil {
		return err
	}
	*l = abs
	return nil
}
