package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/banger-vm/banger/internal/model"
)

// Operations a daemon crash cut short stay "running" in the journal; at
// start-up, once Reconcile has brought every VM in line with the host,
// closeInterrupted closes each as interrupted with a stage saying what
// reconcile made of its VM.

// StageReconciled is the stage an interrupted operation is closed with.
const StageReconciled = "reconcile"

// closeInterrupted closes the operations in unfinished (listed before
// Reconcile ran, so its own are not among them) as interrupted.
func (s *Service) closeInterrupted(ctx context.Context, unfinished []*model.Operation) {
	for _, op := range unfinished {
		detail := "the daemon stopped during this operation; the vm is gone"
		if v, err := s.store.GetVM(ctx, op.VMID); err == nil {
			detail = fmt.Sprintf("the daemon stopped during this operation; reconcile left the vm %s", v.State)
			if v.LastError != "" {
				detail += ": " + v.LastError
			}
		}
		now := time.Now().UTC()
		op.Stages = append(op.Stages, model.Stage{Name: StageReconciled, Status: StatusNote, Detail: detail, At: now})
		op.Status, op.Error, op.EndedAt = model.OpInterrupted, "interrupted by a daemon exit", now
		if err := s.store.UpdateOperation(ctx, op); err != nil {
			s.log.Warn("could not close an interrupted operation", "op_id", op.ID, "vm_id", op.VMID, "error", err)
		}
	}
}
