package main

import "github.com/spf13/cobra"

// newDoctorCommand runs `bangerd doctor` in this process's place: the
// checks need the VMM drivers, which only the daemon links.
func newDoctorCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor [flags]",
		Short: "Check what banger needs from this host, with a fix for each problem",
		Long: "Checks KVM, the VMM binaries, image-building tools, networking and the daemon's socket,\n" +
			"and says which driver `auto` picks and why. Exits 5 when no VM can run here.\n" +
			"Runs `bangerd doctor` (found as for `banger daemon`) with the same arguments.",
		Args:               cobra.ArbitraryArgs,
		DisableFlagParsing: true, // bangerd doctor reads them (--bridge, -o)
		RunE: func(_ *cobra.Command, args []string) error {
			return execDaemon(append([]string{"doctor"}, args...))
		},
	}
}
