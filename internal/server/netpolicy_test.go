package server

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// TestNetworkPolicyOverTheAPI: the policy given at create comes back in
// canonical form; PUT .../network replaces it on a stopped VM only, and a
// bad one is an invalid argument.
func TestNetworkPolicyOverTheAPI(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.importImage(t)
	v, err := h.c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128,
		Network: api.NetworkPolicy{Deny: []string{"1.2.3.4/32"}, Networks: []string{"team"}}})
	if err != nil {
		t.Fatal(err)
	}
	if v.Network.Egress != "internet" || !slices.Equal(v.Network.Deny, []string{"1.2.3.4"}) || !slices.Equal(v.Network.Networks, []string{"team"}) {
		t.Fatalf("policy after create: %+v", v.Network)
	}
	if _, err := h.c.CreateVM(ctx, api.CreateVMRequest{Name: "bad", VCPUs: 1, MemoryMiB: 128, Network: api.NetworkPolicy{Egress: "lan"}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("create with a bad egress: %v", err)
	}
	if vms, _ := h.c.ListVMs(ctx); len(vms) != 1 {
		t.Fatalf("a refused create left %d vms", len(vms))
	}
	v, err = h.c.SetVMNetwork(ctx, "web", api.NetworkPolicy{Egress: "none", Allow: []string{"10.0.0.0/8:443/tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := h.c.GetVM(ctx, "web"); err != nil || got.Network.Egress != "none" || !slices.Equal(got.Network.Allow, []string{"10.0.0.0/8:443/tcp"}) || got.Network.Networks != nil {
		t.Fatalf("policy after set: %+v %v", got.Network, err)
	}
	if _, err := h.c.SetVMNetwork(ctx, "web", api.NetworkPolicy{Allow: []string{"nope"}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("set a bad rule: %v", err)
	}
	if _, err := h.c.StartVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.SetVMNetwork(ctx, "web", api.NetworkPolicy{}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("set on a running vm: %v", err)
	}
	if _, err := h.c.SetVMNetwork(ctx, "nope", api.NetworkPolicy{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("set on a missing vm: %v", err)
	}
}
