package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/errdefs"
)

// The daemon is its own binary, bangerd (cmd/bangerd), so this CLI links
// none of it and starts in half the time. `banger daemon` and `banger
// doctor` run it in this process's place: same PID, arguments and
// environment, so signals and a service manager's tracking reach the
// daemon itself.

// daemonProgram is the daemon's binary name.
const daemonProgram = "bangerd"

func newDaemonCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "daemon [flags]",
		Short: "Run the banger daemon (as root): it owns all VMs and host resources",
		Long: "Runs bangerd, the daemon, in this process's place with the same arguments and environment:\n" +
			"bangerd next to this banger (symlinks resolved), else on PATH. Its flags: bangerd --help.",
		Args:               cobra.ArbitraryArgs,
		DisableFlagParsing: true, // bangerd reads them, the shared ones included
		RunE: func(_ *cobra.Command, args []string) error {
			return execDaemon(args)
		},
	}
}

// execDaemon replaces this process with bangerd, given args (after its
// name). It returns only when bangerd cannot be found or run.
func execDaemon(args []string) error {
	path, err := findDaemon()
	if err != nil {
		return err
	}
	err = syscall.Exec(path, append([]string{path}, args...), os.Environ())
	return errdefs.FailedPrecondition("run %s: %v", path, err)
}

// findDaemon finds bangerd: next to this executable, symlinks resolved,
// then on PATH. Its error names where it looked and how to get bangerd.
func findDaemon() (string, error) {
	var next string
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	if err == nil {
		next = filepath.Join(filepath.Dir(self), daemonProgram)
		if isExecutable(next) {
			return next, nil
		}
	}
	p, perr := exec.LookPath(daemonProgram)
	if perr == nil {
		return filepath.Abs(p)
	}
	if errors.Is(perr, exec.ErrDot) {
		// Found only through a relative PATH entry: not run from there.
		perr = exec.ErrNotFound
	}
	where := "next to this banger"
	hint := "go build -o <dir of banger>/bangerd ./cmd/bangerd"
	if next != "" {
		where = fmt.Sprintf("next to this banger (%s)", next)
		hint = fmt.Sprintf("go build -o %s ./cmd/bangerd", next)
	}
	return "", errdefs.FailedPrecondition("%s, the daemon, is neither %s nor on PATH: %v (hint: %s, or run scripts/quickstart.sh, which installs both)", daemonProgram, where, perr, hint)
}

// isExecutable: p is a regular file someone may execute.
func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
