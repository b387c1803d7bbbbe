package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/vmm"
)

// The guest agent (issue 10). The daemon keeps at most one connection per
// running VM to its agent (QEMU accepts one client per chardev socket) and
// multiplexes every caller's SSH channels on it. It dials lazily, on the
// first request after a start or a daemon restart, and drops the
// connection when the VMM's release runs (teardown) or the connection
// ends.

// agentAttemptTimeout bounds one dial-and-ready attempt; agentMinWait is
// how long a request with no wait of its own still retries (a loaded TCG
// guest can take seconds to answer a handshake).
const (
	agentAttemptTimeout = 15 * time.Second
	agentMinWait        = 30 * time.Second
)

// NoAgentNote is what `vm show` says of a VM whose image has no agent.
const NoAgentNote = "none (image has no banger-agent): using ssh"

// agentConns are the daemon's connections to guest agents, by VM ID. The
// zero value is ready to use.
type agentConns struct {
	mu sync.Mutex
	m  map[string]*agentConn
}

// agentConn is one VM's connection; mu serialises dialing it.
type agentConn struct {
	mu sync.Mutex
	c  *agent.Client
}

func (a *agentConns) slot(id string) *agentConn {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]*agentConn{}
	}
	ac := a.m[id]
	if ac == nil {
		ac = &agentConn{}
		a.m[id] = ac
	}
	return ac
}

// drop closes VM id's connection, if any.
func (a *agentConns) drop(id string) {
	a.mu.Lock()
	ac := a.m[id]
	delete(a.m, id)
	a.mu.Unlock()
	if ac == nil {
		return
	}
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if ac.c != nil {
		ac.c.Close()
		ac.c = nil
	}
}

// agentSocketFor is where v's VMM serves the agent channel: a socket in
// the runtime dir for QEMU; none for Firecracker (its vsock serves).
func (s *Service) agentSocketFor(v *model.VM) string {
	if v.VMM != vmm.KindQEMU {
		return ""
	}
	return s.layout.AgentSocket(v.Short())
}

// agentBinary is the banger-agent image builds install: the daemon's own
// binary, which is banger-agent when called so.
func (s *Service) agentBinary() string {
	if s.cfg.AgentBinary != "" {
		return s.cfg.AgentBinary
	}
	return "/proc/self/exe"
}

// ImageAgent is the agent img carries; nil when it has none (an imported
// image, or one built by a banger without the agent).
func ImageAgent(img *model.Image) *api.ImageAgent {
	if len(img.Manifest) == 0 {
		return nil
	}
	var m struct {
		Agent *api.ImageAgent `json:"agent"`
	}
	if json.Unmarshal(img.Manifest, &m) != nil {
		return nil
	}
	return m.Agent
}

// agentNote is `vm show`'s line about v's agent.
func (s *Service) agentNote(ctx context.Context, v *model.VM) string {
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return ""
	}
	a := ImageAgent(img)
	if a == nil {
		return NoAgentNote
	}
	if a.Protocol != agent.ProtocolVersion {
		return fmt.Sprintf("banger-agent protocol %d, this daemon speaks %d (hint: rebuild the image): using ssh", a.Protocol, agent.ProtocolVersion)
	}
	if v.VMM == vmm.KindQEMU {
		return fmt.Sprintf("banger-agent protocol %d over virtio-serial", a.Protocol)
	}
	return fmt.Sprintf("banger-agent protocol %d over vsock port %d", a.Protocol, agent.VsockPort)
}

// dialAgent makes one connection to v's agent, as recorded.
func (s *Service) dialAgent(ctx context.Context, v *model.VM) (*agent.Client, error) {
	log := s.log.With("vm", v.Name, "vm_id", v.ID)
	switch {
	case v.VMM == vmm.KindFirecracker && v.Runtime.VsockPath != "":
		return agent.DialVsock(ctx, log, v.Runtime.VsockPath, agent.VsockPort)
	case v.Runtime.AgentSocket != "":
		return agent.DialSerial(ctx, log, v.Runtime.AgentSocket)
	}
	return nil, errdefs.NotSupported("vm %q was started without a guest agent channel (hint: restart it with this banger)", v.Name)
}

// Agent returns the connection to ref's guest agent, dialing it if there
// is none, waiting up to wait (at least agentMinWait) for the agent to
// answer ready. A VM whose image has no agent gives NotSupported (the caller
// falls back to SSH); an agent of another protocol version,
// FailedPrecondition with both versions named. The VM is resolved as every
// VM request resolves it (GetVM).
func (s *Service) Agent(ctx context.Context, ref string, wait time.Duration) (*agent.Client, *model.VM, error) {
	v, err := s.GetVM(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	if err := s.notRunning(v); err != nil {
		return nil, v, err
	}
	img, err := s.store.ResolveImage(ctx, v.ImageID)
	if err != nil {
		return nil, v, fmt.Errorf("image of vm %q: %w", v.Name, err)
	}
	if ImageAgent(img) == nil {
		return nil, v, errdefs.NotSupported("vm %q: image %q has no banger-agent (hint: banger uses ssh for it; images banger builds have the agent)", v.Name, img.Name)
	}
	c, err := s.connectAgent(ctx, v, max(wait, agentMinWait))
	return c, v, err
}

// connectAgent returns the daemon's connection to v's agent, dialing it
// (as v's runtime records) and waiting up to wait for the agent to answer
// ready if there is none. The connection is kept for the next caller.
func (s *Service) connectAgent(ctx context.Context, v *model.VM, wait time.Duration) (*agent.Client, error) {
	ac := s.agents.slot(v.ID)
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if ac.c != nil {
		return ac.c, nil
	}
	dial := func(ctx context.Context) (*agent.Client, error) { return s.dialAgent(ctx, v) }
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	c, _, err := agent.WaitReady(wctx, dial, agentAttemptTimeout)
	if err != nil {
		return nil, fmt.Errorf("vm %q: %w", v.Name, err)
	}
	ac.c = c
	go func() {
		_ = c.Wait()
		ac.mu.Lock()
		if ac.c == c {
			ac.c = nil
		}
		ac.mu.Unlock()
	}()
	return c, nil
}

// GuestUser is the account guest commands run as by default.
func (s *Service) GuestUser() string { return s.cfg.GuestUser }
