package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/testutil"
)

// smallFS mounts a tmpfs of size bytes for the test: a real filesystem
// that fills.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount a %s tmpfs: %v", size, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillFS writes path until the filesystem is full.
func fillFS(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

const testReserve = 2 << 20

// fullStore opens a store (with a reserve, or without) on an 8 MiB
// filesystem holding one running VM, fills the filesystem, then writes
// journal entries until a write fails out of space. It returns the store,
// the VM, the reserve's path and the store's log.
func fullStore(t *testing.T, withReserve bool) (*Store, *model.VM, string, *bytes.Buffer) {
	ctx := context.Background()
	dir := smallFS(t, "8m")
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	rpath := filepath.Join(dir, "reserve")
	var opts []Option
	if withReserve {
		opts = append(opts, WithReserve(rpath, testReserve, log))
	}
	s, err := Open(ctx, filepath.Join(dir, "banger.db"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	seedImage(t, s, "img1", "base")
	v := newVM("abcdef0123456789", "web", "img1", "172.30.0.2")
	v.State = model.StateRunning
	insertVM(t, s, v)
	fillFS(t, filepath.Join(dir, "filler"))

	// Writes that are not recoveries fail out of space and leave the
	// reserve alone.
	big := []model.Stage{{Name: "x", Status: "note", Detail: strings.Repeat("d", 64<<10)}}
	for i := 0; ; i++ {
		err := s.InsertOperation(ctx, &model.Operation{VMID: v.ID, Kind: "vm.start", Status: model.OpRunning, Stages: big})
		if err != nil {
			if !outOfSpace(err, dir, testReserve) {
				t.Fatalf("write %d on a full disk: %v, want out of space", i, err)
			}
			t.Logf("a start's journal write failed on the full disk after %d writes: %v", i, err)
			break
		}
		if i == 1000 {
			t.Fatal("1000 writes of 64 KiB landed on a full 8 MiB filesystem")
		}
	}
	return s, v, rpath, &logBuf
}

// recordStop is what a stop records: the VM's state and its journal entry.
func recordStop(ctx context.Context, s *Store, v *model.VM) error {
	v.State, v.Runtime = model.StateStopped, model.Runtime{}
	if err := s.UpdateVM(ctx, v); err != nil {
		return err
	}
	return s.InsertOperation(ctx, &model.Operation{VMID: v.ID, Kind: "vm.stop", Status: model.OpDone})
}

// TestReserveLetsRecoveryWritesLand: on a full filesystem a stop's record
// lands by releasing the reserve (without a reserve it fails: see
// TestNoReserveRecoveryWriteFails); a restart on the full disk migrates;
// once space is back, the next write re-creates the reserve.
func TestReserveLetsRecoveryWritesLand(t *testing.T) {
	ctx := context.Background()
	s, v, rpath, logBuf := fullStore(t, true)
	st, err := os.Stat(rpath)
	if err != nil {
		t.Fatalf("the reserve was used by writes that are not recoveries: %v", err)
	}
	if st.Mode().Perm() != ReserveMode || st.Size() != testReserve {
		t.Fatalf("reserve mode %04o size %d, want %04o %d", st.Mode().Perm(), st.Size(), ReserveMode, testReserve)
	}

	if err := recordStop(Recovery(ctx), s, v); err != nil {
		t.Fatalf("a stop's record on a full disk with a reserve: %v", err)
	}
	if _, err := os.Stat(rpath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reserve still there after a recovery write on a full disk: %v", err)
	}
	if !strings.Contains(logBuf.String(), "released its reserve") {
		t.Fatalf("the release was not logged:\n%s", logBuf)
	}
	got, err := s.GetVM(ctx, v.ID)
	if err != nil || got.State != model.StateStopped {
		t.Fatalf("vm after the stop's record: %+v, %v", got, err)
	}

	// A daemon restart on the still full disk: the store opens.
	dir := filepath.Dir(rpath)
	s.Close()
	log := slog.New(slog.NewTextHandler(logBuf, nil))
	s2, err := Open(ctx, filepath.Join(dir, "banger.db"), WithReserve(rpath, testReserve, log))
	if err != nil {
		t.Fatalf("reopen on a full disk: %v", err)
	}
	t.Cleanup(func() { s2.Close() })
	if err := s2.DeleteVM(Recovery(ctx), v.ID); err != nil {
		t.Fatalf("a delete's record on a full disk: %v", err)
	}

	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	if err := s2.InsertImage(ctx, &model.Image{ID: "img2", Name: "other", KernelPath: "/k", RootfsPath: "/r", RootfsBytes: 1}); err != nil {
		t.Fatal(err)
	}
	st, err = os.Stat(rpath)
	if err != nil || st.Mode().Perm() != ReserveMode || st.Size() != testReserve || st.Sys().(*syscall.Stat_t).Blocks*512 < testReserve {
		t.Fatalf("reserve not re-created once space came back: %v %v", st, err)
	}
	if !strings.Contains(logBuf.String(), "reserve re-created") {
		t.Fatalf("the re-creation was not logged:\n%s", logBuf)
	}
}

// TestNoReserveRecoveryWriteFails is the same full disk without a
// reserve: the stop's record fails, which is what the reserve is for.
func TestNoReserveRecoveryWriteFails(t *testing.T) {
	s, v, _, _ := fullStore(t, false)
	err := recordStop(Recovery(context.Background()), s, v)
	if err == nil {
		t.Fatal("a stop's record landed on a full disk without a reserve: the reserve test proves nothing")
	}
	t.Logf("without a reserve: %v", err)
}

// TestReserveHoldsManyRecoveryWrites: once released, the reserve holds
// many recovery records, not a few: start and stop records (a VM update
// and a journal entry each) on the still full filesystem, up to
// BANGER_RESERVE_RECORDS (default 2000; unset the cap with a large value
// to measure how many fit). With SQLite's default wal_autocheckpoint
// (1000 pages) the WAL took the whole reserve after 39 (119 with the
// checkpoint before the release).
func TestReserveHoldsManyRecoveryWrites(t *testing.T) {
	want := 2000
	if v := os.Getenv("BANGER_RESERVE_RECORDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("BANGER_RESERVE_RECORDS=%q: want a positive integer", v)
		}
		want = n
	}
	ctx := Recovery(context.Background())
	s, v, rpath, _ := fullStore(t, true)
	n := 0
	var err error
	for ; n < want; n++ {
		v.State = model.StateRunning
		if err = s.UpdateVM(ctx, v); err != nil {
			break
		}
		if err = recordStop(ctx, s, v); err != nil {
			break
		}
	}
	var sizes []string
	for _, name := range []string{"banger.db", "banger.db-wal"} {
		if st, serr := os.Stat(filepath.Join(filepath.Dir(rpath), name)); serr == nil {
			sizes = append(sizes, fmt.Sprintf("%s %d bytes", name, st.Size()))
		}
	}
	t.Logf("a %d KiB reserve held %d start and stop records (3 writes each) on a full filesystem (%v); then: %v", testReserve>>10, n, sizes, err)
	if n < want {
		t.Fatalf("the reserve held %d records, want %d", n, want)
	}
}
