package daemon

import (
	"context"
	"sync"

	"github.com/banger-vm/banger/internal/vmm"
)

// probeCache keeps each driver's last probe: replies that show a driver's
// features (vm show, create's checks) do not run the VMM binary each time.
// A start probes afresh (it needs the current acceleration) and refreshes
// the cache, as does GET /v1/info.
type probeCache struct {
	mu   sync.Mutex
	info map[string]vmm.Info
}

func (c *probeCache) get(ctx context.Context, d vmm.Driver) vmm.Info {
	c.mu.Lock()
	info, ok := c.info[d.Kind()]
	c.mu.Unlock()
	if ok {
		return info
	}
	info = d.Probe(ctx)
	c.remember(info)
	return info
}

func (c *probeCache) remember(info vmm.Info) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.info == nil {
		c.info = map[string]vmm.Info{}
	}
	c.info[info.Kind] = info
}
