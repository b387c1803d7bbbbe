package errdefs

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"
)

func TestClassOf(t *testing.T) {
	cases := []struct {
		err  error
		want Class
	}{
		{NotFound("vm %q", "a"), ClassNotFound},
		{fmt.Errorf("outer: %w", AlreadyExists("vm %q", "a")), ClassAlreadyExists},
		{fmt.Errorf("x: %w", ErrConflict), ClassConflict},
		{InvalidArgument("bad"), ClassInvalidArgument},
		{New(ClassUnavailable, "daemon down"), ClassUnavailable},
		{errors.New("plain"), ClassInternal},
		{nil, ClassInternal},
	}
	for _, c := range cases {
		if got := ClassOf(c.err); got != c.want {
			t.Errorf("ClassOf(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestHelpersKeepMessageAndCause(t *testing.T) {
	err := FailedPrecondition("kernel %q: %w", "/k", fs.ErrNotExist)
	if err.Error() != `kernel "/k": file does not exist` {
		t.Fatalf("message = %q", err.Error())
	}
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("errors.Is lost the cause or the class: %v", err)
	}
	if errors.Is(err, ErrNotFound) {
		t.Fatal("an error must not match another class")
	}
	rebuilt := New(ClassOf(err), err.Error())
	if !errors.Is(rebuilt, ErrFailedPrecondition) || rebuilt.Error() != err.Error() {
		t.Fatalf("round trip changed the error: %v", rebuilt)
	}
}

func TestWithClassKeepsTheChain(t *testing.T) {
	cause := NotFound("kernel %q", "/k")
	err := WithClass(ClassFailedPrecondition, fmt.Errorf("start: %w", cause))
	if ClassOf(err) != ClassFailedPrecondition || !errors.Is(err, cause) || err.Error() != `start: kernel "/k"` {
		t.Fatalf("WithClass lost something: %v (%s)", err, ClassOf(err))
	}
}
