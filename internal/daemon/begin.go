package daemon

import (
	"context"

	"github.com/banger-vm/banger/errdefs"
)

// A daemon serves its socket first and recovers in the background: a
// client's first request is answered in milliseconds, whatever the number
// of VMs and however long the VMM binaries take to report their versions.
// Requests that read or change VMs wait until Recover is done, so none sees
// a record reconcile is about to change or starts an operation reconcile
// would close as interrupted (the server decides which requests wait:
// version, info and the lists do not; WaitStarted is how).

// startGate is Begin's recovery: done is closed when it ends, err is its
// error.
type startGate struct {
	done chan struct{}
	err  error
}

// Begin runs, in the background, what the daemon does once it serves: the
// drivers' probes (logged, and cached for later requests) and Recover.
// Until Recover ends WaitStarted holds its callers. The channel receives
// Recover's error (nil on success) once. Call it before serving, once.
func (s *Service) Begin(ctx context.Context) <-chan error {
	g := &startGate{done: make(chan struct{})}
	s.started.Store(g)
	go s.logDrivers(ctx)
	errc := make(chan error, 1)
	go func() {
		err := s.Recover(ctx)
		if err != nil {
			g.err = err
		} else {
			s.log.Debug("start-up recovery done")
		}
		close(g.done)
		errc <- err
	}()
	return errc
}

// WaitStarted waits until Begin's Recover has ended; nil at once when
// nothing began (a service Startup prepared, or a test's). A failed
// recovery, or ctx ending first, is an unavailable error.
func (s *Service) WaitStarted(ctx context.Context) error {
	g := s.started.Load()
	if g == nil {
		return nil
	}
	select {
	case <-g.done:
		if g.err != nil {
			return errdefs.Unavailable("the daemon's start-up failed: %v (hint: see the daemon's log)", g.err)
		}
		return nil
	case <-ctx.Done():
		return errdefs.Unavailable("the daemon is still starting: %v", ctx.Err())
	}
}

// logDrivers probes every driver (the probes are cached) and logs what
// each reports and which one new VMs get.
func (s *Service) logDrivers(ctx context.Context) {
	for _, d := range s.Drivers(ctx) {
		s.log.Info("vmm driver", "kind", d.Kind, "available", d.Available, "reason", d.Reason, "version", d.Version)
	}
	if kind, reason, err := s.ChooseVMM(ctx, ""); err != nil {
		s.log.Warn("no vmm can run new vms on this host", "error", err)
	} else {
		s.log.Info("default vmm", "kind", kind, "reason", reason)
	}
}
