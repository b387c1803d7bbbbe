package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/banger-vm/banger/internal/model"
)

// ListUnfinishedOperations returns every operation still recorded running,
// oldest first: at daemon start, those a crash cut short.
func (s *Store) ListUnfinishedOperations(ctx context.Context) ([]*model.Operation, error) {
	rows, err := s.rdb.QueryContext(ctx, `SELECT id, vm_id, kind, status, error, stages, started_at, ended_at
		FROM operations WHERE status = ? ORDER BY id`, string(model.OpRunning))
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
