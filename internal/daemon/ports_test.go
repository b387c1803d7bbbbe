package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// TestParallelCreatesRaceForOnePort: two creates publishing the same host
// port at once, ten times: exactly one wins each time, the other is a
// conflict naming the winner.
func TestParallelCreatesRaceForOnePort(t *testing.T) {
	e, _ := newNetEnv(t)
	ctx := context.Background()
	for trial := range 10 {
		port := fmt.Sprintf("%d:80", 18000+trial)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = e.svc.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("t%d-%d", trial, i), VCPUs: 1, MemoryMiB: 128, Publish: []string{port}})
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "already published by vm"):
				t.Fatalf("trial %d: the loser's error %v is not a port conflict", trial, err)
			}
		}
		if won != 1 {
			t.Fatalf("trial %d: %d creates won host port %s, want exactly 1", trial, won, port)
		}
	}
	vms, _ := e.svc.ListVMs(ctx)
	if len(vms) != 10 {
		t.Fatalf("%d vms recorded, want 10 (one per trial)", len(vms))
	}
}

func TestPortsPerVMLimit(t *testing.T) {
	e, _ := newNetEnv(t)
	var ports []string
	for i := range MaxPortsPerVM + 1 {
		ports = append(ports, fmt.Sprintf("%d:80", 20000+i))
	}
	_, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "many", VCPUs: 1, MemoryMiB: 128, Publish: ports})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), fmt.Sprintf("over the limit of %d per vm", MaxPortsPerVM)) {
		t.Fatalf("err = %v, want the limit named", err)
	}
	if vms, _ := e.svc.ListVMs(context.Background()); len(vms) != 0 {
		t.Fatalf("refused create recorded %d vms", len(vms))
	}
	if _, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "enough", VCPUs: 1, MemoryMiB: 128, Publish: ports[:MaxPortsPerVM]}); err != nil {
		t.Fatalf("%d ports refused: %v", MaxPortsPerVM, err)
	}
}
