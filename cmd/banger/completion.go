package main

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// completionTimeout bounds a completion's call to the daemon: a shell
// waiting on a tab must not hang when the daemon does.
const completionTimeout = 3 * time.Second

// completeVMs completes VM names (with their state as the description)
// for the first max positional arguments (0: all of them), leaving out names
// already on the command line.
func completeVMs(g *globals, max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		vms, err := g.client().ListVMs(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var out []cobra.Completion
		for _, v := range vms {
			if strings.HasPrefix(v.Name, toComplete) && !slices.Contains(args, v.Name) {
				out = append(out, cobra.CompletionWithDesc(v.Name, v.State))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeImages completes image names for the first max positional
// arguments (0: all of them).
func completeImages(g *globals, max int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		ims, err := g.client().ListImages(ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var out []cobra.Completion
		for _, im := range ims {
			if strings.HasPrefix(im.Name, toComplete) && !slices.Contains(args, im.Name) {
				out = append(out, cobra.CompletionWithDesc(im.Name, bytesIEC(im.RootfsBytes)))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// noCompletion is for arguments banger cannot guess (a new VM's name).
func noCompletion(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}
