package server

import (
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestOutOfSpaceHasItsOwnClass(t *testing.T) {
	for _, err := range []error{
		&os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC},
		fmt.Errorf("update vm %q: %w", "x", fmt.Errorf("database or disk is full (13)")),
	} {
		rec := httptest.NewRecorder()
		writeError(rec, err)
		if rec.Code != 507 || !strings.Contains(rec.Body.String(), `"out_of_space"`) {
			t.Errorf("%v: HTTP %d %s, want 507 out_of_space", err, rec.Code, rec.Body.String())
		}
	}
}
