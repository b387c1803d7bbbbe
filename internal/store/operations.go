package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/banger-vm/banger/internal/model"
)

// InsertOperation journals the start of an operation and sets op.ID.
func (s *Store) InsertOperation(ctx context.Context, op *model.Operation) error {
	stages, err := json.Marshal(op.Stages)
	if err != nil {
		return err
	}
	var res sql.Result
	err = s.write(ctx, func() (err error) {
		res, err = s.db.ExecContext(ctx, `INSERT INTO operations (vm_id, kind, status, error, stages, started_at, ended_at)
		VALUES (?,?,?,?,?,?,?)`, op.VMID, op.Kind, string(op.Status), op.Error, string(stages), nanos(op.StartedAt), nanos(op.EndedAt))
		return err
	})
	if err != nil {
		return fmt.Errorf("journal %s: %w", op.Kind, err)
	}
	op.ID, err = res.LastInsertId()
	return err
}

// UpdateOperation writes the operation's status, error, stages and end.
func (s *Store) UpdateOperation(ctx context.Context, op *model.Operation) error {
	stages, err := json.Marshal(op.Stages)
	if err != nil {
		return err
	}
	err = s.write(ctx, func() error {
		_, err := s.db.ExecContext(ctx, `UPDATE operations SET status=?, error=?, stages=?, ended_at=? WHERE id=?`,
			string(op.Status), op.Error, string(stages), nanos(op.EndedAt), op.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("journal %s: %w", op.Kind, err)
	}
	return nil
}

// ListOperations returns a VM's operations, newest first; limit <= 0 means all.
func (s *Store) ListOperations(ctx context.Context, vmID string, limit int) ([]*model.Operation, error) {
	if limit <= 0 {
		limit = -1
	}
	return s.queryOperations(ctx, `WHERE vm_id = ? ORDER BY id DESC LIMIT ?`, vmID, limit)
}

// queryOperations reads the operations a WHERE/ORDER clause selects.
func (s *Store) queryOperations(ctx context.Context, clause string, args ...any) ([]*model.Operation, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, vm_id, kind, status, error, stages, started_at, ended_at
		FROM operations `+clause, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*model.Operation
	for rows.Next() {
		var (
			op             model.Operation
			status, stages string
			start, end     int64
		)
		if err := rows.Scan(&op.ID, &op.VMID, &op.Kind, &status, &op.Error, &stages, &start, &end); err != nil {
			return nil, err
		}
		op.Status = model.OpStatus(status)
		op.StartedAt, op.EndedAt = fromNanos(start), fromNanos(end)
		if err := json.Unmarshal([]byte(stages), &op.Stages); err != nil {
			return nil, fmt.Errorf("operation %d stages: %w", op.ID, err)
		}
		out = append(out, &op)
	}
	return out, rows.Err()
}
