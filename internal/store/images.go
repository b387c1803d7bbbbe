package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
)

const imageColumns = `id, name, kernel_path, vmlinux_path, initrd_path, rootfs_path, rootfs_bytes, cmdline, manifest, created_at, owner_uid`

func scanImage(r scanner) (*model.Image, error) {
	var (
		im      model.Image
		created int64
	)
	if err := r.Scan(&im.ID, &im.Name, &im.KernelPath, &im.VmlinuxPath, &im.InitrdPath, &im.RootfsPath, &im.RootfsBytes, &im.Cmdline, &im.Manifest, &created, &im.OwnerUID); err != nil {
		return nil, err
	}
	im.CreatedAt = fromNanos(created)
	return &im, nil
}

// InsertImage records a new image; its name must be unused.
func (t *Tx) InsertImage(ctx context.Context, im *model.Image) error {
	if im.CreatedAt.IsZero() {
		im.CreatedAt = time.Now().UTC()
	}
	_, err := t.tx.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?)`,
		im.ID, im.Name, im.KernelPath, im.VmlinuxPath, im.InitrdPath, im.RootfsPath, im.RootfsBytes, im.Cmdline, im.Manifest, nanos(im.CreatedAt), im.OwnerUID)
	if isUnique(err) {
		return errdefs.AlreadyExists("image %q already exists (hint: pick another name, or delete it first)", im.Name)
	}
	if err != nil {
		return fmt.Errorf("insert image %q: %w", im.Name, err)
	}
	return nil
}

// ResolveImage finds an image by exact ID, then exact name, then unique ID prefix.
func (t *Tx) ResolveImage(ctx context.Context, ref string) (*model.Image, error) {
	if ref == "" {
		return nil, errdefs.InvalidArgument("empty image reference (hint: give an image name or id)")
	}
	im, err := scanImage(t.tx.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1`, ref, ref, ref))
	if err == nil {
		return im, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	if len(ref) >= MinPrefix && hexPrefix.MatchString(ref) {
		ims, err := t.queryImages(ctx, `SELECT `+imageColumns+` FROM images WHERE substr(id, 1, ?) = ? LIMIT 2`, len(ref), ref)
		if err != nil {
			return nil, err
		}
		switch len(ims) {
		case 1:
			return ims[0], nil
		case 2:
			return nil, errdefs.InvalidArgument("image id prefix %q is ambiguous (hint: give more characters, or the name)", ref)
		}
	}
	return nil, errdefs.NotFound("image %q not found (hint: banger image list shows the images)", ref)
}

// ImageName returns the name of image id (indexed: one row read).
func (t *Tx) ImageName(ctx context.Context, id string) (string, error) {
	var name string
	err := t.tx.QueryRowContext(ctx, `SELECT name FROM images WHERE id = ?`, id).Scan(&name)
	if err != nil {
		return "", notFound(err, "image %q not found", id)
	}
	return name, nil
}

func (t *Tx) ListImages(ctx context.Context) ([]*model.Image, error) {
	return t.queryImages(ctx, `SELECT `+imageColumns+` FROM images ORDER BY created_at, id`)
}

func (t *Tx) queryImages(ctx context.Context, q string, args ...any) ([]*model.Image, error) {
	rows, err := t.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*model.Image
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, rows.Err()
}

// DeleteImage removes an image record, refusing while VMs use it.
func (t *Tx) DeleteImage(ctx context.Context, id string) error {
	users, err := t.VMsUsingImage(ctx, id)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return errdefs.FailedPrecondition("image is used by vm %s (hint: delete those vms first)", names(users))
	}
	if snaps, err := t.SnapshotNamesUsingImage(ctx, id); err != nil {
		return err
	} else if len(snaps) > 0 {
		return errdefs.FailedPrecondition("image is used by snapshot %s (hint: delete those snapshots first: banger vm snapshot delete NAME)", quoted(snaps))
	}
	res, err := t.tx.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete image %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errdefs.NotFound("image %q not found", id)
	}
	return nil
}

func (s *Store) ResolveImage(ctx context.Context, ref string) (*model.Image, error) {
	return view(ctx, s, func(t *Tx) (*model.Image, error) { return t.ResolveImage(ctx, ref) })
}

// ResolveImageUsers resolves ref and names the VMs made from it (image show).
func (s *Store) ResolveImageUsers(ctx context.Context, ref string) (*model.Image, []string, error) {
	type out struct {
		im    *model.Image
		users []string
	}
	o, err := view(ctx, s, func(t *Tx) (out, error) {
		im, err := t.ResolveImage(ctx, ref)
		if err != nil {
			return out{}, err
		}
		users, err := t.VMNamesUsingImage(ctx, im.ID)
		return out{im, users}, err
	})
	return o.im, o.users, err
}

func (s *Store) ImageName(ctx context.Context, id string) (string, error) {
	return view(ctx, s, func(t *Tx) (string, error) { return t.ImageName(ctx, id) })
}

func (s *Store) ListImages(ctx context.Context) ([]*model.Image, error) {
	return view(ctx, s, func(t *Tx) ([]*model.Image, error) { return t.ListImages(ctx) })
}

func (s *Store) InsertImage(ctx context.Context, im *model.Image) error {
	return s.Transaction(ctx, func(t *Tx) error { return t.InsertImage(ctx, im) })
}
