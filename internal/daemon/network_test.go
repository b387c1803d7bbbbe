package daemon

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
)

// fakeNet records what the service asks of the host network; the real
// network.Manager is tested against the kernel in internal/network.
type fakeNet struct {
	mu            sync.Mutex
	taps          map[string]bool
	published     map[string][]network.Publish
	failPublish   error
	failUnpub     error
	failDeleteTp  error
	failCreateTap error
	// Network isolation (netpolicy_test.go): each VM's applied rules.
	vms        map[string]network.VMNet
	failApplVM error
}

func newFakeNet() *fakeNet {
	return &fakeNet{taps: map[string]bool{}, published: map[string][]network.Publish{}, vms: map[string]network.VMNet{}}
}

func (f *fakeNet) EnsureHost(context.Context) error { return nil }

func (f *fakeNet) ForgetNeighbour(netip.Addr) error { return nil }

func (f *fakeNet) CreateTap(_ context.Context, name string, _ int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failCreateTap != nil {
		return f.failCreateTap
	}
	f.taps[name] = true
	return nil
}

func (f *fakeNet) DeleteTap(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failDeleteTp != nil {
		return f.failDeleteTp
	}
	delete(f.taps, name)
	return nil
}

func (f *fakeNet) RemoveOrphanTaps(_ context.Context, owned func(string) bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var removed []string
	for t := range f.taps {
		if !owned(t) {
			delete(f.taps, t)
			removed = append(removed, t)
		}
	}
	return removed, nil
}

func (f *fakeNet) Publish(_ context.Context, owner string, _ netip.Addr, p network.Publish) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failPublish != nil {
		return f.failPublish
	}
	f.published[owner] = append(f.published[owner], p)
	return nil
}

func (f *fakeNet) Unpublish(_ context.Context, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failUnpub != nil {
		return f.failUnpub
	}
	delete(f.published, owner)
	return nil
}

func (f *fakeNet) PublishAll(ctx context.Context, owner string, ip netip.Addr, ps []network.Publish) error {
	for _, p := range ps {
		if err := f.Publish(ctx, owner, ip, p); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeNet) Published(context.Context) ([]network.Published, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []network.Published
	for owner, ps := range f.published {
		for _, p := range ps {
			out = append(out, network.Published{Publish: p, Owner: owner})
		}
	}
	return out, nil
}

func (f *fakeNet) state() (taps int, published int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.taps), len(f.published)
}

func newNetEnv(t *testing.T) (*env, *fakeNet) {
	e := newEnv(t)
	fn := newFakeNet()
	e.svc.cfg.Network = fn
	e.svc.caps = newCapabilities(e.svc.cfg)
	return e, fn
}

func TestStartMakesTapAndPublishesWhileRunning(t *testing.T) {
	e, fn := newNetEnv(t)
	v, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80", "5353:53/udp"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Ports) != 2 || v.Ports[1] != (model.PortMapping{HostPort: 5353, GuestPort: 53, Proto: "udp"}) {
		t.Fatalf("ports %+v", v.Ports)
	}
	v, err = e.svc.StartVM(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if v.Runtime.Tap != "tap-fc-"+v.Short() || !fn.taps[v.Runtime.Tap] || len(fn.published[v.ID]) != 2 {
		t.Fatalf("tap %q taps %v published %v", v.Runtime.Tap, fn.taps, fn.published)
	}
	_, stages := e.lastOp("web")
	if !slices.Contains(stages, "network.tap:done") || !slices.Contains(stages, "cap.publish:done") {
		t.Fatalf("stages %v", stages)
	}
	if _, err := e.svc.StopVM(context.Background(), "web", StopOptions{}); err != nil {
		t.Fatal(err)
	}
	if taps, pubs := fn.state(); taps != 0 || pubs != 0 {
		t.Fatalf("after stop: %d taps, %d published owners", taps, pubs)
	}
}

func TestPublishFailureRollsBackTheStart(t *testing.T) {
	e, fn := newNetEnv(t)
	if _, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}}); err != nil {
		t.Fatal(err)
	}
	fn.failPublish = errdefs.Conflict("host port 8080/tcp is already published")
	_, err := e.svc.StartVM(context.Background(), "web")
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("err = %v", err)
	}
	v := e.get("web")
	if v.State != model.StateError || alive(e.fake.Process(v.ID)) {
		t.Fatalf("state %s", v.State)
	}
	if taps, pubs := fn.state(); taps != 0 || pubs != 0 {
		t.Fatalf("rollback left %d taps, %d published", taps, pubs)
	}
	_, stages := e.lastOp("web")
	if !slices.Contains(stages, "network.tap:undone") || !slices.Contains(stages, "vmm.launch:undone") {
		t.Fatalf("stages %v", stages)
	}
}

func TestCapabilityCleanupErrorsAreJoinedAndNamed(t *testing.T) {
	e, fn := newNetEnv(t)
	e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}})
	if _, err := e.svc.StartVM(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	fn.failUnpub = errors.New("nft busy")
	_, err := e.svc.StopVM(context.Background(), "web", StopOptions{})
	if err == nil || !strings.Contains(err.Error(), "cap.publish: nft busy") {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(e.logs.String(), `"msg":"capability cleanup failed"`) || !strings.Contains(e.logs.String(), `"capability":"publish"`) {
		t.Fatal("failed capability not warned by name")
	}
	v := e.get("web")
	if v.State != model.StateError || v.Runtime.Tap == "" {
		t.Fatalf("a failed cleanup must keep the runtime for a retry: %s %+v", v.State, v.Runtime)
	}
	fn.failUnpub = nil
	if _, err := e.svc.StopVM(context.Background(), "web", StopOptions{}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if taps, pubs := fn.state(); taps != 0 || pubs != 0 {
		t.Fatalf("retry left %d taps, %d published", taps, pubs)
	}
}

func TestPublishValidationAtCreate(t *testing.T) {
	e, _ := newNetEnv(t)
	if _, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "a", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		publish []string
		class   error
	}{
		{[]string{"8080:81"}, errdefs.ErrConflict},
		{[]string{"9090:80", "9090:81"}, errdefs.ErrInvalidArgument},
		{[]string{"80"}, errdefs.ErrInvalidArgument},
		{[]string{"70000:80"}, errdefs.ErrInvalidArgument},
		{[]string{"80:80/sctp"}, errdefs.ErrInvalidArgument},
	} {
		_, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "b", VCPUs: 1, MemoryMiB: 128, Publish: c.publish})
		if !errors.Is(err, c.class) {
			t.Errorf("%v: err = %v, want %v", c.publish, err, c.class)
		}
	}
	if vms, _ := e.st.ListVMs(context.Background()); len(vms) != 1 {
		t.Fatalf("%d vms", len(vms))
	}
	// Without a host network, publishing is refused.
	e.svc.cfg.Network = nil
	if _, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "c", Publish: []string{"1:1"}}); !errors.Is(err, errdefs.ErrNotSupported) {
		t.Fatalf("no network: %v", err)
	}
}

func TestStartupRemovesOrphanTapsAndStalePublishes(t *testing.T) {
	e, fn := newNetEnv(t)
	e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "live", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}})
	live, err := e.svc.StartVM(context.Background(), "live")
	if err != nil {
		t.Fatal(err)
	}
	fn.taps["tap-fc-deadbeef"] = true // left by a vm that no longer exists
	fn.published["gone-vm-id"] = []network.Publish{{HostPort: 9090, GuestPort: 80, Proto: "tcp"}}
	if err := e.svc.Startup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fn.taps["tap-fc-deadbeef"] || !fn.taps[live.Runtime.Tap] {
		t.Fatalf("taps after startup: %v", fn.taps)
	}
	if _, ok := fn.published["gone-vm-id"]; ok || len(fn.published[live.ID]) != 1 {
		t.Fatalf("published after startup: %v", fn.published)
	}
}

// fakeCap is a capability that records its cleanups and can fail them.
type fakeCap struct {
	name     string
	fail     error
	cleanups int
}

func (c *fakeCap) Name() string                             { return c.name }
func (c *fakeCap) Enabled(*model.VM) bool                   { return true }
func (c *fakeCap) Prepare(context.Context, *model.VM) error { return nil }
func (c *fakeCap) Cleanup(context.Context, *model.VM) error { c.cleanups++; return c.fail }

func TestEveryCapabilityIsCleanedUpAndEachFailureNamed(t *testing.T) {
	e := newEnv(t)
	first := &fakeCap{name: "first", fail: errors.New("first broke")}
	second := &fakeCap{name: "second"}
	third := &fakeCap{name: "third", fail: errors.New("third broke")}
	e.svc.caps = []capability{first, second, third}
	e.started("web")
	_, err := e.svc.StopVM(context.Background(), "web", StopOptions{})
	if err == nil || !strings.Contains(err.Error(), "cap.first: first broke") || !strings.Contains(err.Error(), "cap.third: third broke") {
		t.Fatalf("err = %v, want both failures joined", err)
	}
	if first.cleanups != 1 || second.cleanups != 1 || third.cleanups != 1 {
		t.Fatalf("cleanups %d %d %d: a failure must not stop the others", first.cleanups, second.cleanups, third.cleanups)
	}
	logs := e.logs.String()
	for _, name := range []string{`"capability":"first"`, `"capability":"third"`} {
		if !strings.Contains(logs, name) {
			t.Errorf("no warning naming %s", name)
		}
	}
	if strings.Contains(logs, `"capability":"second"`) {
		t.Error("a capability that cleaned up fine was warned about")
	}
	e.svc.caps = nil
}
