package main

import (
	"strings"
	"testing"

	"github.com/banger-vm/banger/cmd/internal/cli"
)

// TestSnapshotCommandsArgumentCounts: pause, resume, snapshot and restore
// refuse a wrong argument count as a usage error (exit 2) before any
// daemon is asked.
func TestSnapshotCommandsArgumentCounts(t *testing.T) {
	for _, args := range [][]string{
		{"vm", "pause"}, {"vm", "resume"}, {"vm", "restore", "a"}, {"vm", "restore", "a", "b", "c"},
		{"vm", "snapshot", "create"}, {"vm", "snapshot", "create", "a", "b", "c"}, {"vm", "snapshot", "list", "x"},
		{"vm", "snapshot", "show"}, {"vm", "snapshot", "delete"},
	} {
		_, err := run(t, args...)
		if cli.ExitCode(err) != cli.ExitInvalidArgument || !strings.Contains(err.Error(), "usage:") {
			t.Errorf("banger %s: exit %d (%v), want %d with the usage", strings.Join(args, " "), cli.ExitCode(err), err, cli.ExitInvalidArgument)
		}
	}
}
