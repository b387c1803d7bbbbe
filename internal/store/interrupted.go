package store

import (
	"context"

	"github.com/banger-vm/banger/internal/model"
)

// ListUnfinishedOperations returns every operation still recorded running,
// oldest first: at daemon start, those a crash cut short.
func (s *Store) ListUnfinishedOperations(ctx context.Context) ([]*model.Operation, error) {
	return s.queryOperations(ctx, `WHERE status = ? ORDER BY id`, string(model.OpRunning))
}
