package store

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
)

const snapshotColumns = `id, name, vm_id, vm_name, image_id, vmm, vcpus, memory_mib, kernel, dir, size_bytes, meta, owner_uid, created_at,
	kind, disk_strategy, disk_bytes, guest_ip`

func scanSnapshot(r scanner) (*model.Snapshot, error) {
	var (
		sn      model.Snapshot
		meta    string
		created int64
	)
	if err := r.Scan(&sn.ID, &sn.Name, &sn.VMID, &sn.VMName, &sn.ImageID, &sn.VMM, &sn.VCPUs, &sn.MemoryMiB, &sn.Kernel,
		&sn.Dir, &sn.SizeBytes, &meta, &sn.OwnerUID, &created, &sn.Kind, &sn.DiskStrategy, &sn.DiskBytes, &sn.GuestIP); err != nil {
		return nil, err
	}
	sn.Meta = []byte(meta)
	sn.CreatedAt = fromNanos(created)
	return &sn, nil
}

// InsertSnapshot records a new snapshot; its name must be unused.
func (t *Tx) InsertSnapshot(ctx context.Context, sn *model.Snapshot) error {
	if sn.CreatedAt.IsZero() {
		sn.CreatedAt = time.Now().UTC()
	}
	_, err := t.tx.ExecContext(ctx, `INSERT INTO snapshots (`+snapshotColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		sn.ID, sn.Name, sn.VMID, sn.VMName, sn.ImageID, sn.VMM, sn.VCPUs, sn.MemoryMiB, sn.Kernel, sn.Dir, sn.SizeBytes,
		string(sn.Meta), sn.OwnerUID, nanos(sn.CreatedAt), cmp.Or(sn.Kind, model.SnapshotUser), sn.DiskStrategy, sn.DiskBytes, sn.GuestIP)
	if isUnique(err) {
		return errdefs.AlreadyExists("snapshot %q already exists (hint: pick another name, or delete it first)", sn.Name)
	}
	if err != nil {
		return fmt.Errorf("insert snapshot %q: %w", sn.Name, err)
	}
	return nil
}

// ResolveSnapshot finds a snapshot by exact ID, then exact name, then
// unique ID prefix.
func (t *Tx) ResolveSnapshot(ctx context.Context, ref string) (*model.Snapshot, error) {
	if ref == "" {
		return nil, errdefs.InvalidArgument("empty snapshot reference (hint: give a snapshot name or id)")
	}
	sns, err := t.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1`, ref, ref, ref)
	if err != nil {
		return nil, err
	}
	if len(sns) == 1 {
		return sns[0], nil
	}
	if len(ref) >= MinPrefix && hexPrefix.MatchString(ref) {
		sns, err := t.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE substr(id, 1, ?) = ? LIMIT 2`, len(ref), ref)
		if err != nil {
			return nil, err
		}
		switch len(sns) {
		case 1:
			return sns[0], nil
		case 2:
			return nil, errdefs.InvalidArgument("snapshot id prefix %q is ambiguous (hint: give more characters, or the name)", ref)
		}
	}
	return nil, errdefs.NotFound("snapshot %q not found (hint: banger vm snapshot list shows the snapshots)", ref)
}

// SnapshotNameTaken reports whether a snapshot has this name.
func (t *Tx) SnapshotNameTaken(ctx context.Context, name string) (bool, error) {
	var n int
	err := t.tx.QueryRowContext(ctx, `SELECT count(*) FROM snapshots WHERE name = ?`, name).Scan(&n)
	return n > 0, err
}

// WarmSnapshotsOf returns image id's warm snapshots.
func (t *Tx) WarmSnapshotsOf(ctx context.Context, imageID string) ([]*model.Snapshot, error) {
	return t.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE image_id = ? AND kind = ? ORDER BY created_at, id`, imageID, model.SnapshotWarm)
}

func (s *Store) WarmSnapshotsOf(ctx context.Context, imageID string) ([]*model.Snapshot, error) {
	return view(ctx, s, func(t *Tx) ([]*model.Snapshot, error) { return t.WarmSnapshotsOf(ctx, imageID) })
}

// ListSnapshots returns every snapshot, oldest first.
func (t *Tx) ListSnapshots(ctx context.Context) ([]*model.Snapshot, error) {
	return t.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots ORDER BY created_at, id`)
}

// SnapshotNamesUsingImage names the user snapshots that depend on image
// id (its warm snapshots are the image's own: they go with it).
func (t *Tx) SnapshotNamesUsingImage(ctx context.Context, imageID string) ([]string, error) {
	sns, err := t.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE image_id = ? AND kind = ? ORDER BY name`, imageID, model.SnapshotUser)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(sns))
	for i, sn := range sns {
		out[i] = sn.Name
	}
	return out, nil
}

// DeleteSnapshot removes the record of snapshot id.
func (t *Tx) DeleteSnapshot(ctx context.Context, id string) error {
	res, err := t.tx.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errdefs.NotFound("snapshot %q not found", id)
	}
	return nil
}

func (t *Tx) querySnapshots(ctx context.Context, q string, args ...any) ([]*model.Snapshot, error) {
	rows, err := t.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*model.Snapshot
	for rows.Next() {
		sn, err := scanSnapshot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}

func (s *Store) InsertSnapshot(ctx context.Context, sn *model.Snapshot) error {
	return s.Transaction(ctx, func(t *Tx) error { return t.InsertSnapshot(ctx, sn) })
}

func (s *Store) ResolveSnapshot(ctx context.Context, ref string) (*model.Snapshot, error) {
	return view(ctx, s, func(t *Tx) (*model.Snapshot, error) { return t.ResolveSnapshot(ctx, ref) })
}

func (s *Store) SnapshotNameTaken(ctx context.Context, name string) (bool, error) {
	return view(ctx, s, func(t *Tx) (bool, error) { return t.SnapshotNameTaken(ctx, name) })
}

func (s *Store) ListSnapshots(ctx context.Context) ([]*model.Snapshot, error) {
	return view(ctx, s, func(t *Tx) ([]*model.Snapshot, error) { return t.ListSnapshots(ctx) })
}

func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	return s.Transaction(ctx, func(t *Tx) error { return t.DeleteSnapshot(ctx, id) })
}

// quoted lists names for messages: "a", "b".
func quoted(ns []string) string {
	q := make([]string, len(ns))
	for i, n := range ns {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}
