package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/model"
)

// journalTimeout bounds each journal write; the journal never blocks an
// operation for long and never fails one.
const journalTimeout = 5 * time.Second

// operation is one journalled lifecycle call: begun, its stages, then done
// or failed. It is persisted (vm show, vm ops) and logged (slog JSON).
type operation struct {
	s   *Service
	vm  *model.VM
	log *slog.Logger
	mu  sync.Mutex
	rec model.Operation
}

// begin journals the start of kind on vm.
func (s *Service) begin(ctx context.Context, kind string, vm *model.VM) *operation {
	op := s.newOperation(kind, vm)
	op.open(ctx)
	return op
}

// newOperation starts kind on vm in memory: its stages are logged, and
// kept until open persists them (a create opens once its record exists).
func (s *Service) newOperation(kind string, vm *model.VM) *operation {
	op := &operation{
		s:   s,
		vm:  vm,
		log: s.log.With("op", kind, "vm", vm.Name, "vm_id", vm.ID),
		rec: model.Operation{Kind: kind, Status: model.OpRunning, StartedAt: time.Now().UTC()},
	}
	op.log.Info("operation begun", "image_id", vm.ImageID, "vmm", vm.VMM, "state", string(vm.State),
		"vcpus", vm.VCPUs, "memory_mib", vm.MemoryMiB, "guest_ip", vm.GuestIP)
	return op
}

// open persists the operation and the stages so far; the VM's record must
// exist.
func (o *operation) open(ctx context.Context) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), journalTimeout)
	defer cancel()
	o.mu.Lock()
	o.rec.VMID = o.vm.ID
	rec := o.rec
	rec.Stages = append([]model.Stage(nil), o.rec.Stages...)
	o.mu.Unlock()
	if err := o.s.store.InsertOperation(wctx, &rec); err != nil {
		o.log.Warn("journal write failed", "error", err)
		return
	}
	o.mu.Lock()
	o.rec.ID = rec.ID
	o.mu.Unlock()
}

// Stage records one named stage: status is "done", "failed", "undone",
// "undo-failed" or "note".
func (o *operation) Stage(name, status, detail string) {
	o.mu.Lock()
	o.rec.Stages = append(o.rec.Stages, model.Stage{Name: name, Status: status, Detail: detail, At: time.Now().UTC()})
	o.mu.Unlock()
	attrs := []any{"stage", name, "status", status}
	if detail != "" {
		attrs = append(attrs, "detail", detail)
	}
	if status == "failed" || status == "undo-failed" {
		o.log.Warn("stage", attrs...)
	} else {
		o.log.Info("stage", attrs...)
	}
	o.persist()
}

// Note records a stage that is an observation rather than a step.
func (o *operation) Note(name, detail string) { o.Stage(name, "note", detail) }

// finish closes the operation with err's outcome and returns err unchanged.
func (o *operation) finish(err error) error {
	o.mu.Lock()
	o.rec.EndedAt = time.Now().UTC()
	dur := o.rec.EndedAt.Sub(o.rec.StartedAt)
	if err != nil {
		o.rec.Status, o.rec.Error = model.OpFailed, err.Error()
	} else {
		o.rec.Status = model.OpDone
	}
	o.mu.Unlock()
	if err != nil {
		o.log.Error("operation failed", "error", err, "duration_ms", dur.Milliseconds())
	} else {
		o.log.Info("operation done", "duration_ms", dur.Milliseconds())
	}
	o.persist()
	return err
}

func (o *operation) persist() {
	o.mu.Lock()
	rec := o.rec
	rec.Stages = append([]model.Stage(nil), o.rec.Stages...)
	o.mu.Unlock()
	if rec.ID == 0 {
		return // not opened yet, or the open failed (logged)
	}
	ctx, cancel := context.WithTimeout(context.Background(), journalTimeout)
	defer cancel()
	if err := o.s.store.UpdateOperation(ctx, &rec); err != nil {
		o.log.Warn("journal write failed", "error", err)
	}
}
