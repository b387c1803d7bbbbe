package daemon

import (
	"context"

	"github.com/banger-vm/banger/internal/model"
)

// VMView is a VM as `vm show` and every lifecycle reply show it. Building
// it reads a constant amount, however many VMs share its image: the image
// name (one indexed row), the last operation, and the driver's cached probe.
type VMView struct {
	VM            *model.VM
	Image         string // image name; empty if the image is gone
	LastOperation *model.Operation
	// Unsupported lists the driver features v lacks on this host, with why.
	Unsupported map[string]string
	// Agent says how banger reaches the guest (issue 10).
	Agent string
	// Origin is the snapshot the VM was made from; nil if none (issue 12).
	Origin *model.Origin
}

// ShowVM resolves ref and returns its view.
func (s *Service) ShowVM(ctx context.Context, ref string) (*VMView, error) {
	v, err := s.resolveVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	return s.View(ctx, v), nil
}

// View is v's view; parts that cannot be read are left empty (and logged).
func (s *Service) View(ctx context.Context, v *model.VM) *VMView {
	out := &VMView{VM: v, Unsupported: s.unsupported(ctx, v), Agent: s.agentNote(ctx, v)}
	if name, err := s.store.ImageName(ctx, v.ImageID); err == nil {
		out.Image = name
	} else {
		s.log.Warn("vm view: image name", append(vmAttrs(v), "error", err)...)
	}
	if o, err := s.store.Origin(ctx, v.ID); err == nil {
		out.Origin = o
	} else {
		s.log.Warn("vm view: origin", append(vmAttrs(v), "error", err)...)
	}
	if ops, err := s.store.ListOperations(ctx, v.ID, 1); err == nil && len(ops) == 1 {
		out.LastOperation = ops[0]
	} else if err != nil {
		s.log.Warn("vm view: last operation", append(vmAttrs(v), "error", err)...)
	}
	return out
}

// LogMayGrow reports whether VM id's log may still grow: its VMM may be
// running (starting, running or stopping). A VM that is gone: no.
func (s *Service) LogMayGrow(ctx context.Context, id string) bool {
	v, err := s.store.GetVM(ctx, id)
	if err != nil {
		return false
	}
	return v.State.Live()
}
