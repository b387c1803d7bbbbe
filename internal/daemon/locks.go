package daemon

import (
	"context"
	"sync"
)

// vmLocks serializes operations on one VM while letting different VMs
// proceed in parallel. Waiting respects the caller's context.
type vmLocks struct {
	mu sync.Mutex
	m  map[string]*vmLock
}

type vmLock struct {
	ch   chan struct{} // holds one token while locked
	refs int
}

func newVMLocks() *vmLocks { return &vmLocks{m: map[string]*vmLock{}} }

// lock takes the lock of VM id; the returned func releases it.
func (l *vmLocks) lock(ctx context.Context, id string) (func(), error) {
	l.mu.Lock()
	lk := l.m[id]
	if lk == nil {
		lk = &vmLock{ch: make(chan struct{}, 1)}
		l.m[id] = lk
	}
	lk.refs++
	l.mu.Unlock()

	select {
	case lk.ch <- struct{}{}:
		return func() {
			<-lk.ch
			l.release(id, lk)
		}, nil
	case <-ctx.Done():
		l.release(id, lk)
		return nil, ctx.Err()
	}
}

func (l *vmLocks) release(id string, lk *vmLock) {
	l.mu.Lock()
	lk.refs--
	if lk.refs == 0 {
		delete(l.m, id)
	}
	l.mu.Unlock()
}

// size is the number of VMs with a holder or waiter (for leak tests).
func (l *vmLocks) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
