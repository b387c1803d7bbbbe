package network

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/banger-vm/banger/errdefs"
)

// TestPublishAllIsOneBatch: a refused port in a batch adds none of the
// batch; an accepted batch adds every rule; a repeat adds nothing.
func TestPublishAllIsOneBatch(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	m := e.m
	if err := m.EnsureHost(ctx); err != nil {
		t.Fatal(err)
	}
	g1, g2 := netip.MustParseAddr("10.201.0.2"), netip.MustParseAddr("10.201.0.3")
	held := Publish{HostPort: 8081, GuestPort: 80, Proto: ProtoTCP}
	if err := m.Publish(ctx, "vm1", g1, held); err != nil {
		t.Fatal(err)
	}
	batch := []Publish{{HostPort: 9001, GuestPort: 1, Proto: ProtoTCP}, {HostPort: 9002, GuestPort: 2, Proto: ProtoUDP}, held}
	if err := m.PublishAll(ctx, "vm2", g2, batch); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("batch with a held port = %v, want conflict", err)
	}
	checkPublished(t, m, []Published{{Publish: held, Owner: "vm1", GuestIP: g1}})
	batch = batch[:2]
	for range 2 { // the repeat is a no-op
		if err := m.PublishAll(ctx, "vm2", g2, batch); err != nil {
			t.Fatal(err)
		}
	}
	checkPublished(t, m, []Published{{Publish: held, Owner: "vm1", GuestIP: g1},
		{Publish: batch[0], Owner: "vm2", GuestIP: g2}, {Publish: batch[1], Owner: "vm2", GuestIP: g2}})
}
