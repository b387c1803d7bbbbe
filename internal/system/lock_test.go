package system

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLockFileExcludesUntilReleased(t *testing.T) {
	for name, path := range map[string]string{
		"file": filepath.Join(t.TempDir(), "x.lock"),
		"dir":  t.TempDir(),
	} {
		t.Run(name, func(t *testing.T) {
			unlock, err := LockFile(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := TryLockFile(path); !errors.Is(err, ErrLocked) {
				t.Fatalf("second lock while held: %v, want ErrLocked", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
			defer cancel()
			if _, err := LockFile(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("waiting lock while held: %v, want the context's end", err)
			}
			unlock()
			unlock2, err := TryLockFile(path)
			if err != nil {
				t.Fatalf("lock after release: %v", err)
			}
			unlock2()
			if name == "file" {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Fatalf("lock file mode %v, want 0600", fi.Mode().Perm())
				}
			}
		})
	}
}
