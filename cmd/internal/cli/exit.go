package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/errdefs"
)

// Exit codes, one per error class.
const (
	ExitOK                 = 0
	ExitInternal           = 1
	ExitInvalidArgument    = 2
	ExitNotFound           = 3
	ExitAlreadyExists      = 4
	ExitFailedPrecondition = 5
	ExitUnavailable        = 6
	ExitNotSupported       = 7
	ExitOutOfSpace         = 8
	ExitPermissionDenied   = 9
)

// ExitCode maps an error's class to the process exit code.
func ExitCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	switch errdefs.ClassOf(err) {
	case errdefs.ClassInvalidArgument:
		return ExitInvalidArgument
	case errdefs.ClassNotFound:
		return ExitNotFound
	case errdefs.ClassAlreadyExists, errdefs.ClassConflict:
		return ExitAlreadyExists
	case errdefs.ClassFailedPrecondition:
		return ExitFailedPrecondition
	case errdefs.ClassUnavailable:
		return ExitUnavailable
	case errdefs.ClassNotSupported:
		return ExitNotSupported
	case errdefs.ClassOutOfSpace:
		return ExitOutOfSpace
	case errdefs.ClassPermissionDenied:
		return ExitPermissionDenied
	}
	return ExitInternal
}

// ExitError carries an exit code that is not an error class (a guest
// command's own exit status, doctor's verdict) and is not printed.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs root until SIGINT or SIGTERM cancels its context, prints an
// error as "prog: error" on stderr (unless it is an ExitError), and exits
// with the error's code.
func Main(prog string, root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee *ExitError
		if !errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, prog+":", err)
		}
		os.Exit(ExitCode(err))
	}
	os.Exit(ExitOK)
}
