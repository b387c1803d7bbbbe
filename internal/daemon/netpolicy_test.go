package daemon

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
)

// The fake host network's policy side: the real one is tested against the
// kernel in internal/network.

func (f *fakeNet) ApplyVM(_ context.Context, v network.VMNet) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failApplVM != nil {
		return f.failApplVM
	}
	f.vms[v.Owner] = v
	return nil
}

func (f *fakeNet) RemoveVM(_ context.Context, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.vms, owner)
	return nil
}

func (f *fakeNet) RemoveOrphanVMs(_ context.Context, owned func(string) bool) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var removed []string
	for id := range f.vms {
		if !owned(id) {
			delete(f.vms, id)
			removed = append(removed, id)
		}
	}
	return removed, nil
}

func (f *fakeNet) vmRules() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.vms)
}

func (f *fakeNet) rulesOf(id string) (network.VMNet, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[id]
	return v, ok
}

// TestStartAppliesThePolicyAndTeardownRemovesIt: the VM's rules name its
// tap, IP, MAC and policy while it runs, and are gone once it stops.
func TestStartAppliesThePolicyAndTeardownRemovesIt(t *testing.T) {
	e, fn := newNetEnv(t)
	ctx := context.Background()
	_, err := e.svc.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128,
		Network: api.NetworkPolicy{Egress: "none", Allow: []string{"10.1.2.3:443/tcp"}, Networks: []string{"team", "ci", "team"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := fn.rulesOf(e.get("web").ID); ok {
		t.Fatal("a stopped vm has rules")
	}
	v, err := e.svc.StartVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := fn.rulesOf(v.ID)
	if !ok {
		t.Fatal("a running vm has no rules: its tap passes nothing")
	}
	if got.Tap != v.Runtime.Tap || got.IP.String() != v.GuestIP || got.MAC.String() != network.MACFor(v.ID) {
		t.Fatalf("rules for tap %s ip %s mac %s; vm has %s %s %s", got.Tap, got.IP, got.MAC, v.Runtime.Tap, v.GuestIP, network.MACFor(v.ID))
	}
	if got.Policy.Egress != "none" || len(got.Policy.Allow) != 1 || got.Policy.Allow[0].String() != "10.1.2.3:443/tcp" || !slices.Equal(got.Policy.Networks, []string{"ci", "team"}) {
		t.Fatalf("policy applied %+v", got.Policy)
	}
	_, stages := e.lastOp("web")
	if i, j := slices.Index(stages, "network.tap:done"), slices.Index(stages, "network.policy:done"); i < 0 || j != i+1 || j > slices.Index(stages, "vmm.launch:done") {
		t.Fatalf("network.policy must run after network.tap, before the vmm launches: %v", stages)
	}
	if _, err := e.svc.KillVM(ctx, "web", "KILL"); err != nil {
		t.Fatal(err)
	}
	if n := fn.vmRules(); n != 0 {
		t.Fatalf("%d vms' rules left after the vm stopped", n)
	}
}

// TestCreateRefusesABadPolicy: each bad policy is an invalid argument that
// names the bad value, and nothing is created.
func TestCreateRefusesABadPolicy(t *testing.T) {
	e, _ := newNetEnv(t)
	for _, c := range []struct {
		pol  api.NetworkPolicy
		says string
	}{
		{api.NetworkPolicy{Egress: "lan"}, `"lan"`},
		{api.NetworkPolicy{Allow: []string{"10.0.0.0/33"}}, `"10.0.0.0/33"`},
		{api.NetworkPolicy{Deny: []string{"1.2.3.4:99999"}}, `"1.2.3.4:99999"`},
		{api.NetworkPolicy{Allow: []string{"::1"}}, "IPv4"},
		{api.NetworkPolicy{Networks: []string{"Team"}}, `"Team"`},
	} {
		_, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Network: c.pol})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: err = %v; want an invalid argument naming %s", c.pol, err, c.says)
		}
		e.assertNothingCreated()
	}
}

// TestSetNetPolicyOnlyWhileStopped: a stopped VM's policy is replaced (in
// canonical form) and applies at its next start; a running VM is refused
// and keeps its policy; a bad policy changes nothing.
func TestSetNetPolicyOnlyWhileStopped(t *testing.T) {
	e, fn := newNetEnv(t)
	ctx := context.Background()
	e.started("web")
	_, err := e.svc.SetNetPolicy(ctx, "web", model.NetPolicy{Egress: "none"})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "banger vm stop web") {
		t.Fatalf("set on a running vm: %v", err)
	}
	if p := e.get("web").NetPolicy; !reflect.DeepEqual(p, model.NetPolicy{Egress: "internet"}) {
		t.Fatalf("policy after a refused set: %+v", p)
	}
	if _, err := e.svc.StopVM(ctx, "web", StopOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetNetPolicy(ctx, "web", model.NetPolicy{Egress: "bogus"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad policy: %v", err)
	}
	v, err := e.svc.SetNetPolicy(ctx, "web", model.NetPolicy{Deny: []string{"1.2.3.4/32"}, Networks: []string{"team"}})
	if err != nil {
		t.Fatal(err)
	}
	want := model.NetPolicy{Egress: "internet", Deny: []string{"1.2.3.4"}, Networks: []string{"team"}}
	if !reflect.DeepEqual(v.NetPolicy, want) || !reflect.DeepEqual(e.get("web").NetPolicy, want) {
		t.Fatalf("policy %+v recorded %+v, want %+v", v.NetPolicy, e.get("web").NetPolicy, want)
	}
	if got := NetPolicySummary(v.NetPolicy); got != "egress internet; deny 1.2.3.4; networks team" {
		t.Fatalf("summary %q", got)
	}
	v, err = e.svc.StartVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := fn.rulesOf(v.ID); len(r.Policy.Deny) != 1 || !slices.Equal(r.Policy.Networks, []string{"team"}) {
		t.Fatalf("rules at the next start %+v", r.Policy)
	}
}

// TestStartupReappliesRulesAndRemovesOrphans: after a daemon restart every
// running VM has its rules (those a banger without policies started had
// none), and rules of VMs that hold no tap are gone.
func TestStartupReappliesRulesAndRemovesOrphans(t *testing.T) {
	e, fn := newNetEnv(t)
	ctx := context.Background()
	live := e.started("live")
	e.create("idle")
	fn.vms = map[string]network.VMNet{"gone-vm-id": {Owner: "gone-vm-id"}} // the old daemon's: live's are missing
	if err := e.svc.Startup(ctx); err != nil {
		t.Fatal(err)
	}
	if r, ok := fn.rulesOf(live.ID); !ok || r.Tap != live.Runtime.Tap || r.IP.String() != live.GuestIP {
		t.Fatalf("running vm's rules after startup: %+v %v", r, ok)
	}
	if _, ok := fn.rulesOf("gone-vm-id"); ok || fn.vmRules() != 1 {
		t.Fatalf("rules after startup: %d vms", fn.vmRules())
	}
}
