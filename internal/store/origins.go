package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/banger-vm/banger/internal/model"
)

// InsertOrigin records the snapshot VM o.VMID was made from.
func (t *Tx) InsertOrigin(ctx context.Context, o *model.Origin) error {
	if o.CreatedAt.IsZero() {
		o.CreatedAt = time.Now().UTC()
	}
	_, err := t.tx.ExecContext(ctx, `INSERT INTO vm_origins (vm_id, snapshot_id, snapshot_name, warm, pending, created_at) VALUES (?,?,?,?,?,?)`,
		o.VMID, o.SnapshotID, o.SnapshotName, o.Warm, o.Pending, nanos(o.CreatedAt))
	if err != nil {
		return fmt.Errorf("record the origin of vm %s: %w", o.VMID, err)
	}
	return nil
}

// Origin is the snapshot VM id was made from; nil if it was not.
func (t *Tx) Origin(ctx context.Context, vmID string) (*model.Origin, error) {
	var (
		o       model.Origin
		created int64
	)
	err := t.tx.QueryRowContext(ctx, `SELECT vm_id, snapshot_id, snapshot_name, warm, pending, created_at FROM vm_origins WHERE vm_id = ?`, vmID).
		Scan(&o.VMID, &o.SnapshotID, &o.SnapshotName, &o.Warm, &o.Pending, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("origin of vm %s: %w", vmID, err)
	}
	o.CreatedAt = fromNanos(created)
	return &o, nil
}

// SetOriginDone records that VM id's restore has happened: its later
// starts boot.
func (t *Tx) SetOriginDone(ctx context.Context, vmID string) error {
	if _, err := t.tx.ExecContext(ctx, `UPDATE vm_origins SET pending = 0 WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("record the restore of vm %s: %w", vmID, err)
	}
	return nil
}

// VMsPendingRestore names the VMs whose first start is still to restore
// snapshot id.
func (t *Tx) VMsPendingRestore(ctx context.Context, snapshotID string) ([]string, error) {
	return t.queryStrings(ctx, `SELECT v.name FROM vm_origins o JOIN vms v ON v.id = o.vm_id WHERE o.snapshot_id = ? AND o.pending = 1 ORDER BY v.name`, snapshotID)
}

func (s *Store) InsertOrigin(ctx context.Context, o *model.Origin) error {
	return s.Transaction(ctx, func(t *Tx) error { return t.InsertOrigin(ctx, o) })
}

func (s *Store) Origin(ctx context.Context, vmID string) (*model.Origin, error) {
	return view(ctx, s, func(t *Tx) (*model.Origin, error) { return t.Origin(ctx, vmID) })
}

func (s *Store) SetOriginDone(ctx context.Context, vmID string) error {
	return s.Transaction(ctx, func(t *Tx) error { return t.SetOriginDone(ctx, vmID) })
}

func (s *Store) VMsPendingRestore(ctx context.Context, snapshotID string) ([]string, error) {
	return view(ctx, s, func(t *Tx) ([]string, error) { return t.VMsPendingRestore(ctx, snapshotID) })
}

// WarmSnapshot is image imageID's warm snapshot for a VM of driver vmm and
// shape vcpus/memoryMiB; nil if it has none.
func (s *Store) WarmSnapshot(ctx context.Context, imageID, vmm string, vcpus, memoryMiB int) (*model.Snapshot, error) {
	return view(ctx, s, func(t *Tx) (*model.Snapshot, error) {
		sns, err := t.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE kind = ? AND image_id = ? AND vmm = ? AND vcpus = ? AND memory_mib = ? ORDER BY created_at DESC LIMIT 1`,
			model.SnapshotWarm, imageID, vmm, vcpus, memoryMiB)
		if err != nil || len(sns) == 0 {
			return nil, err
		}
		return sns[0], nil
	})
}
