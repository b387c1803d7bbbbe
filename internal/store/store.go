// Package store persists images, VMs and the operation journal in SQLite.
// It maps "no rows" to errdefs.ErrNotFound and uniqueness violations to
// errdefs.ErrAlreadyExists; callers never see driver errors' text as API.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/banger-vm/banger/errdefs"
)

// Store is banger's database. Writes go through db, whose transactions
// take SQLite's write lock up front (BEGIN IMMEDIATE: no lock upgrades, no
// SQLITE_BUSY mid-transaction); reads go through rdb, whose read-only
// transactions never take it (WAL readers do not block the writer).
//
// On a full filesystem, writes fail out of space (SQLITE_FULL), except
// recovery writes, which may use the reserve (see WithReserve, Recovery).
type Store struct {
	db      *sql.DB
	rdb     *sql.DB
	reserve *reserve // nil: none
}

// WALCheckpointPages is SQLite's wal_autocheckpoint: the WAL is copied
// into the database once it holds this many pages, and the next write
// starts it over, reusing its blocks. SQLite's default, 1000 pages (4
// MiB), would let the WAL alone take a released reserve on a full disk:
// then a checkpoint has no room to grow the database and every write
// fails. At 128 pages (512 KiB) the WAL cycles within its blocks and the
// reserve is left for the database's growth.
const WALCheckpointPages = 128

// JournalSizeLimit bounds the WAL file once it is reset after a checkpoint
// (PRAGMA journal_size_limit): a burst of writes does not leave it at its
// peak size for good. Below it, the WAL's blocks stay allocated and are
// reused: room for the next writes even on a full filesystem.
const JournalSizeLimit = 1 << 20

// Open opens (creating if needed) the database at path and migrates it.
// The migration is a recovery write: a daemon restarts on a full disk.
func Open(ctx context.Context, path string, opts ...Option) (*Store, error) {
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(NORMAL)", "busy_timeout(10000)", "foreign_keys(1)",
		fmt.Sprintf("journal_size_limit(%d)", JournalSizeLimit), fmt.Sprintf("wal_autocheckpoint(%d)", WALCheckpointPages)} {
		q.Add("_pragma", p)
	}
	rq := url.Values{}
	for k, v := range q {
		rq[k] = v
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db}
	for _, o := range opts {
		o(s)
	}
	if err := s.migrate(Recovery(ctx)); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate store %s: %w", path, err)
	}
	rq.Add("_pragma", "query_only(1)")
	if s.rdb, err = sql.Open("sqlite", "file:"+path+"?"+rq.Encode()); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if s.reserve != nil {
		s.reserve.ensure()
	}
	return s, nil
}

func (s *Store) Close() error { return errors.Join(s.rdb.Close(), s.db.Close()) }

// migrations are applied in order; PRAGMA user_version counts those applied.
// Never edit one that has shipped: append.
var migrations = []string{
	`CREATE TABLE images (
		id           TEXT PRIMARY KEY,
		name         TEXT NOT NULL UNIQUE,
		kernel_path  TEXT NOT NULL,
		vmlinux_path TEXT NOT NULL DEFAULT '',
		initrd_path  TEXT NOT NULL DEFAULT '',
		rootfs_path  TEXT NOT NULL,
		rootfs_bytes INTEGER NOT NULL,
		cmdline      TEXT NOT NULL DEFAULT '',
		manifest     BLOB,
		created_at   INTEGER NOT NULL
	);
	CREATE TABLE vms (
		id             TEXT PRIMARY KEY,
		name           TEXT NOT NULL UNIQUE,
		image_id       TEXT NOT NULL REFERENCES images(id),
		vcpus          INTEGER NOT NULL,
		memory_mib     INTEGER NOT NULL,
		disk_bytes     INTEGER NOT NULL,
		vmm            TEXT NOT NULL,
		vmm_reason     TEXT NOT NULL DEFAULT '',
		state          TEXT NOT NULL,
		guest_ip       TEXT UNIQUE,
		vm_dir         TEXT NOT NULL,
		log_path       TEXT NOT NULL,
		last_error     TEXT NOT NULL DEFAULT '',
		ports          TEXT NOT NULL DEFAULT '[]',
		host_key       TEXT NOT NULL DEFAULT '',
		pid            INTEGER NOT NULL DEFAULT 0,
		pid_start_time INTEGER NOT NULL DEFAULT 0,
		control_socket TEXT NOT NULL DEFAULT '',
		vsock_path     TEXT NOT NULL DEFAULT '',
		vsock_cid      INTEGER NOT NULL DEFAULT 0,
		tap            TEXT NOT NULL DEFAULT '',
		dm_name        TEXT NOT NULL DEFAULT '',
		accel          TEXT NOT NULL DEFAULT '',
		started_at     INTEGER NOT NULL DEFAULT 0,
		created_at     INTEGER NOT NULL,
		updated_at     INTEGER NOT NULL
	);
	CREATE TABLE operations (
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
		kind       TEXT NOT NULL,
		status     TEXT NOT NULL,
		error      TEXT NOT NULL DEFAULT '',
		stages     TEXT NOT NULL DEFAULT '[]',
		started_at INTEGER NOT NULL,
		ended_at   INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX operations_vm ON operations(vm_id, id);`,
	// 2: vm show and image delete look VMs up by image; startup reconcile
	// reads only the VMs in a live state.
	`CREATE INDEX vms_image ON vms(image_id);
	CREATE INDEX vms_state ON vms(state);`,
	// Root disk strategy (issue 11): VMs made before it have a sparse copy
	// of their image (rootfs.ext4, raw).
	`ALTER TABLE vms ADD COLUMN disk_strategy TEXT NOT NULL DEFAULT 'sparse-copy';
	ALTER TABLE vms ADD COLUMN disk_reason TEXT NOT NULL DEFAULT 'made before banger chose a strategy per vm: a sparse copy of the image';`,
	// Snapshots (issue 12). No reference to vms: a snapshot outlives its VM.
	`CREATE TABLE snapshots (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL UNIQUE,
		vm_id      TEXT NOT NULL,
		vm_name    TEXT NOT NULL,
		image_id   TEXT NOT NULL REFERENCES images(id),
		vmm        TEXT NOT NULL,
		vcpus      INTEGER NOT NULL,
		memory_mib INTEGER NOT NULL,
		kernel     TEXT NOT NULL,
		dir        TEXT NOT NULL,
		size_bytes INTEGER NOT NULL,
		meta       TEXT NOT NULL,
		owner_uid  INTEGER NOT NULL DEFAULT 0,
		created_at INTEGER NOT NULL
	);
	CREATE INDEX snapshots_image ON snapshots(image_id);
	CREATE INDEX snapshots_vm ON snapshots(vm_id);`,
	// Reliability and ownership (issue 9): how the VMM last ended on its
	// own (JSON, model.Exit; empty: never), and who made each VM and image.
	`ALTER TABLE vms ADD COLUMN last_exit TEXT NOT NULL DEFAULT '';
	ALTER TABLE vms ADD COLUMN owner_uid INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE images ADD COLUMN owner_uid INTEGER NOT NULL DEFAULT 0;`,
	// guest agent (issue 10): the QEMU virtio-serial socket of a running VM.
	`ALTER TABLE vms ADD COLUMN agent_socket TEXT NOT NULL DEFAULT '';`,
	// Network isolation: each VM's network policy, JSON (model.NetPolicy).
	// VMs created before get "{}", the default: egress to public
	// destinations only, isolated from every other guest.
	`ALTER TABLE vms ADD COLUMN net_policy TEXT NOT NULL DEFAULT '{}';`,
	// Forks and warm images (issue 12): what a snapshot's guest woke with
	// (its disk strategy and size, its IP) and whether it is a user's
	// snapshot or an image's warm one; and the snapshot a VM was forked
	// from, with whether its first start (a restore) is still to come.
	// Snapshots made before have kind 'user' and an empty disk strategy
	// and IP (read from the disk file and the source VM when forked).
	`ALTER TABLE snapshots ADD COLUMN kind TEXT NOT NULL DEFAULT 'user';
	ALTER TABLE snapshots ADD COLUMN disk_strategy TEXT NOT NULL DEFAULT '';
	ALTER TABLE snapshots ADD COLUMN disk_bytes INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE snapshots ADD COLUMN guest_ip TEXT NOT NULL DEFAULT '';
	CREATE TABLE vm_origins (
		vm_id         TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
		snapshot_id   TEXT NOT NULL,
		snapshot_name TEXT NOT NULL,
		warm          INTEGER NOT NULL DEFAULT 0,
		pending       INTEGER NOT NULL DEFAULT 1,
		created_at    INTEGER NOT NULL
	);
	CREATE INDEX vm_origins_snapshot ON vm_origins(snapshot_id);`,
	// Warm images' templates (issue 12): the file a running VM's RAM is
	// mapped from, which its teardown removes; empty: anonymous memory.
	`ALTER TABLE vms ADD COLUMN memory_file TEXT NOT NULL DEFAULT '';`,
}

func (s *Store) migrate(ctx context.Context) error {
	// A current schema (every start but the first after an upgrade) is
	// read, not written: no write transaction, no WAL frame, no sync.
	var current int
	if err := s.db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&current); err != nil {
		return err
	}
	if current == len(migrations) {
		return nil
	}
	return s.Transaction(ctx, func(tx *Tx) error {
		var v int
		if err := tx.tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
			return err
		}
		if v > len(migrations) {
			return fmt.Errorf("database schema version %d is newer than this banger (%d) (hint: upgrade banger)", v, len(migrations))
		}
		for i := v; i < len(migrations); i++ {
			if _, err := tx.tx.ExecContext(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		_, err := tx.tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations)))
		return err
	})
}

// Tx is one transaction. Its methods are the store's queries.
type Tx struct {
	tx *sql.Tx
}

// Transaction runs fn in a write transaction, committing if fn returns nil.
// A recovery write (see Recovery) may run fn twice: once more after
// releasing the reserve.
func (s *Store) Transaction(ctx context.Context, fn func(*Tx) error) error {
	return s.write(ctx, func() error { return s.transaction(ctx, fn) })
}

func (s *Store) transaction(ctx context.Context, fn func(*Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(&Tx{tx: tx}); err != nil {
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
			return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// view runs fn in a read-only transaction and returns its value.
func view[T any](ctx context.Context, s *Store, fn func(*Tx) (T, error)) (T, error) {
	var out T
	tx, err := s.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return out, fmt.Errorf("begin read: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // read-only: nothing to commit, nothing to lose
	return fn(&Tx{tx: tx})
}

func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return true
		}
	}
	return false
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return errdefs.NotFound(format, args...)
	}
	return err
}
