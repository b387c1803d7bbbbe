package main

import (
	"slices"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/netpolicy"
)

// addNetworkFlags declares the network policy flags of create, run and set.
func addNetworkFlags(cmd *cobra.Command, p *api.NetworkPolicy) {
	f := cmd.Flags()
	f.StringVar(&p.Egress, "egress", "", "what the guest reaches outside: internet (public addresses only; the default) or none")
	f.StringArrayVar(&p.Allow, "allow", nil, "let the guest reach CIDR[:PORT[-PORT][/tcp|/udp]], even a private range (repeatable)")
	f.StringArrayVar(&p.Deny, "deny", nil, "never let the guest reach CIDR[:PORT[-PORT][/tcp|/udp]]; beats --allow (repeatable)")
	f.StringArrayVar(&p.Networks, "network", nil, "join the named network: VMs sharing one reach each other (repeatable; default: isolated)")
	_ = cmd.RegisterFlagCompletionFunc("egress", cobra.FixedCompletions([]cobra.Completion{netpolicy.EgressInternet, netpolicy.EgressNone}, cobra.ShellCompDirectiveNoFileComp))
	for _, n := range []string{"allow", "deny", "network"} {
		_ = cmd.RegisterFlagCompletionFunc(n, cobra.NoFileCompletions)
	}
}

func newVMSet(g *globals) *cobra.Command {
	var p api.NetworkPolicy
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Change a stopped VM's network policy (each flag given replaces its part; an empty value clears a list)",
		Example: `  banger vm set web --egress none --allow 10.0.0.5:5432/tcp
  banger vm set web --network team --network ci
  banger vm set web --network ''        # isolated again`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeVMs(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			if !f.Changed("egress") && !f.Changed("allow") && !f.Changed("deny") && !f.Changed("network") {
				return errdefs.InvalidArgument("nothing to change (hint: banger vm set %s --egress none|internet, --allow SPEC, --deny SPEC or --network NAME)", args[0])
			}
			c := g.client()
			v, err := c.GetVM(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			next := v.Network
			if f.Changed("egress") {
				next.Egress = p.Egress
			}
			list := func(name string, dst *[]string, val []string) {
				if f.Changed(name) {
					*dst = slices.DeleteFunc(slices.Clone(val), func(s string) bool { return s == "" })
				}
			}
			list("allow", &next.Allow, p.Allow)
			list("deny", &next.Deny, p.Deny)
			list("network", &next.Networks, p.Networks)
			v, err = c.SetVMNetwork(cmd.Context(), v.ID, next)
			if err != nil {
				return err
			}
			return renderVM(cmd.OutOrStdout(), g.output, v)
		},
	}
	addNetworkFlags(cmd, &p)
	return cmd
}

// netSummary is the policy line of `vm show`.
func netSummary(p api.NetworkPolicy) string {
	np, err := netpolicy.ParsePolicy(p.Egress, p.Allow, p.Deny, p.Networks)
	if err != nil {
		return "invalid (" + err.Error() + ")"
	}
	return np.String()
}
