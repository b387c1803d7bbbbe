package daemon

import (
	"context"

	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
)

// detached operations (stop, kill, delete, and the stop half of restart),
// once begun, are finished even if the request is cancelled: a
// half-stopped VM helps no one. Waiting for the VM's lock still ends with
// the request.
const detached = true

// runOp resolves and locks ref, journals kind and runs fn under the lock;
// with detach, fn runs on a context the request's cancellation cannot end.
func (s *Service) runOp(ctx context.Context, ref, kind string, detach bool, fn func(ctx context.Context, v *model.VM, op *operation) error) (*model.VM, error) {
	var out *model.VM
	err := s.withVM(ctx, ref, func(v *model.VM) error {
		if detach {
			// A recovery: on a full disk its records may use the
			// state dir's reserve (store.Recovery).
			ctx = store.Recovery(context.WithoutCancel(ctx))
		}
		op := s.begin(ctx, kind, v)
		out = v
		return op.finish(fn(ctx, v, op))
	})
	return out, err
}
