package main

import (
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/version"
)

func newVersionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the versions and commits of this CLI and of the daemon, and the API version each speaks",
		Long: "Print the versions and commits of this CLI and of the daemon, and the API version each speaks.\n" +
			"The CLI's part is printed even when the daemon cannot be reached (exit 6 then).",
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runVersion(cmd, g) },
	}
}

// clientVersion is this binary's build.
func clientVersion() api.VersionInfo {
	v := version.Get()
	return api.VersionInfo{Version: v.Version, Commit: v.Commit, APIVersion: api.Version, GoVersion: runtime.Version()}
}

// runVersion prints both builds; the daemon's error, if any, is the
// command's (printed once by main, on stderr).
func runVersion(cmd *cobra.Command, g *globals) error {
	out := api.Versions{Client: clientVersion()}
	d, err := g.client().Version(cmd.Context())
	if errors.Is(err, errdefs.ErrNotFound) {
		// Only a daemon older than the version route answers not found.
		err = errdefs.FailedPrecondition("the daemon has no version route: it is older than this CLI (hint: restart the daemon from this binary)")
	}
	if err != nil {
		out.DaemonError = err.Error()
	} else {
		out.Daemon = &d
	}
	if rerr := renderVersions(cmd.OutOrStdout(), g.output, out); rerr != nil {
		return rerr
	}
	return err
}

func renderVersions(w io.Writer, format string, v api.Versions) error {
	if format == "json" {
		return cli.WriteJSON(w, v)
	}
	t := cli.Table(w)
	part := func(title string, p api.VersionInfo) {
		fmt.Fprintf(t, "%s:\n", title)
		fmt.Fprintf(t, "  Version:\t%s\n", p.Version)
		fmt.Fprintf(t, "  Commit:\t%s\n", dash(p.Commit))
		fmt.Fprintf(t, "  API version:\t%s\n", p.APIVersion)
		fmt.Fprintf(t, "  Go version:\t%s\n", p.GoVersion)
	}
	part("Client", v.Client)
	if v.Daemon != nil {
		part("Daemon", *v.Daemon)
	} else {
		fmt.Fprintf(t, "Daemon:\n  unavailable (see the error below)\n")
	}
	return t.Flush()
}
