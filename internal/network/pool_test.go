package network

import (
	"errors"
	"testing"

	"github.com/banger-vm/banger/errdefs"
)

func TestPoolAllocation(t *testing.T) {
	p, err := NewPool("10.5.0.0/29")
	if err != nil {
		t.Fatal(err)
	}
	if p.Gateway().String() != "10.5.0.1" || p.Size() != 5 {
		t.Fatalf("gateway %s size %d", p.Gateway(), p.Size())
	}
	var used []string
	for _, want := range []string{"10.5.0.2", "10.5.0.3", "10.5.0.4", "10.5.0.5", "10.5.0.6"} {
		a, err := p.Allocate(used)
		if err != nil || a.String() != want {
			t.Fatalf("Allocate = %v, %v; want %s", a, err, want)
		}
		used = append(used, a.String())
	}
	if _, err := p.Allocate(used); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("exhausted pool: got %v", err)
	}
	// A released address is reused, lowest first.
	if a, _ := p.Allocate(append(used[:1:1], used[2:]...)); a.String() != "10.5.0.3" {
		t.Fatalf("reuse = %s", a)
	}
}

func TestPoolRejectsBadPrefixes(t *testing.T) {
	for _, bad := range []string{"", "banana", "10.0.0.0/30", "10.0.0.1/32", "fd00::/64"} {
		if _, err := NewPool(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("NewPool(%q) = %v, want invalid argument", bad, err)
		}
	}
}

func TestCIDAndMAC(t *testing.T) {
	cid, err := CIDFor("172.30.0.2")
	if err != nil || cid != 0xac1e0002 {
		t.Fatalf("cid = %#x, %v", cid, err)
	}
	if _, err := CIDFor("0.0.0.1"); err == nil {
		t.Fatal("reserved cid accepted")
	}
	if m := MACFor("abcdef0123"); m != "06:fc:ab:cd:ef:01" {
		t.Fatalf("mac = %s", m)
	}
}
