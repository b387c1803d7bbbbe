package server

import (
	"errors"
	"strings"
	"syscall"
)

// outOfSpace reports a write that failed because a filesystem is full:
// ENOSPC or EDQUOT from the kernel, or SQLite's "database or disk is full"
// (SQLITE_FULL, which modernc's driver reports as text).
func outOfSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) ||
		strings.Contains(err.Error(), "database or disk is full")
}
