// Package errdefs defines the small set of error classes that banger uses
// everywhere: the store and the daemon wrap these sentinels with %w, the API
// edge turns a class into an HTTP status and back, and the CLI turns a class
// into an exit code. Nothing ever matches on error text.
package errdefs

import (
	"errors"
	"fmt"
)

// Class is the wire name of an error class.
type Class string

const (
	ClassNotFound           Class = "not_found"
	ClassAlreadyExists      Class = "already_exists"
	ClassInvalidArgument    Class = "invalid_argument"
	ClassFailedPrecondition Class = "failed_precondition"
	ClassConflict           Class = "conflict"
	ClassUnavailable        Class = "unavailable"
	ClassNotSupported       Class = "not_supported"
	ClassInternal           Class = "internal"
	// ClassOutOfSpace: a write failed because a filesystem is full.
	ClassOutOfSpace Class = "out_of_space"
	// ClassPermissionDenied: the caller may not do this (another user's VM
	// or image, a privileged port, a build over the size limit).
	ClassPermissionDenied Class = "permission_denied"
)

// Sentinels. Wrap them: fmt.Errorf("vm %q: %w", name, errdefs.ErrNotFound).
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrConflict           = errors.New("conflict")
	ErrUnavailable        = errors.New("unavailable")
	ErrNotSupported       = errors.New("not supported")
	ErrOutOfSpace         = errors.New("out of space")
	ErrPermissionDenied   = errors.New("permission denied")
)

var classes = []struct {
	class Class
	err   error
}{
	{ClassNotFound, ErrNotFound},
	{ClassAlreadyExists, ErrAlreadyExists},
	{ClassInvalidArgument, ErrInvalidArgument},
	{ClassFailedPrecondition, ErrFailedPrecondition},
	{ClassConflict, ErrConflict},
	{ClassUnavailable, ErrUnavailable},
	{ClassNotSupported, ErrNotSupported},
	{ClassOutOfSpace, ErrOutOfSpace},
	{ClassPermissionDenied, ErrPermissionDenied},
}

// ClassOf returns the class of err; errors without one are internal.
func ClassOf(err error) Class {
	var ce *classedError
	if errors.As(err, &ce) {
		return ce.class
	}
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.class
		}
	}
	return ClassInternal
}

// New returns an error of the given class carrying msg verbatim. It is how
// the client rebuilds an error received from the daemon: errors.Is works on
// the result (errors.Is(err, ErrNotFound)) and Error() is exactly msg.
func New(class Class, msg string) error {
	return &classedError{class: class, msg: msg}
}

type classedError struct {
	class Class
	msg   string
	cause error
}

func (e *classedError) Error() string { return e.msg }

func (e *classedError) Unwrap() error { return e.cause }

func (e *classedError) Is(target error) bool {
	for _, c := range classes {
		if c.class == e.class {
			return target == c.err
		}
	}
	return false
}

// Helpers that read well at call sites. The message is exactly the formatted
// text (no class suffix); %w in format keeps the cause reachable by errors.Is.

func NotFound(format string, args ...any) error {
	return wrap(ClassNotFound, format, args)
}

func AlreadyExists(format string, args ...any) error {
	return wrap(ClassAlreadyExists, format, args)
}

func InvalidArgument(format string, args ...any) error {
	return wrap(ClassInvalidArgument, format, args)
}

func FailedPrecondition(format string, args ...any) error {
	return wrap(ClassFailedPrecondition, format, args)
}

func Conflict(format string, args ...any) error {
	return wrap(ClassConflict, format, args)
}

func Unavailable(format string, args ...any) error {
	return wrap(ClassUnavailable, format, args)
}

func NotSupported(format string, args ...any) error {
	return wrap(ClassNotSupported, format, args)
}

func OutOfSpace(format string, args ...any) error {
	return wrap(ClassOutOfSpace, format, args)
}

func PermissionDenied(format string, args ...any) error {
	return wrap(ClassPermissionDenied, format, args)
}

func wrap(class Class, format string, args []any) error {
	err := fmt.Errorf(format, args...)
	return &classedError{class: class, msg: err.Error(), cause: errors.Unwrap(err)}
}

// WithClass gives err the class c while keeping its message and its chain
// (errors.Is and errors.As still see err's causes).
func WithClass(c Class, err error) error {
	if err == nil {
		return nil
	}
	return &classedError{class: c, msg: err.Error(), cause: err}
}
