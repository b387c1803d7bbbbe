package vmm

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/banger-vm/banger/errdefs"
)

// Auto asks for the best driver this host can run.
const Auto = "auto"

// AutoOrder is Auto's preference: Firecracker where it can run, else QEMU
// (whose Probe reports KVM or TCG).
var AutoOrder = []string{KindFirecracker, KindQEMU}

// Choose resolves requested (a driver kind or Auto) to a driver that can
// run on this host, with the reason for the choice; it also returns the
// chosen driver's Info.
func Choose(ctx context.Context, reg Registry, requested string) (Info, string, error) {
	if requested != Auto {
		d, ok := reg[requested]
		if !ok {
			return Info{}, "", errdefs.InvalidArgument("unknown vmm %q (hint: one of %s, or %s)", requested, strings.Join(slices.Sorted(maps.Keys(reg)), ", "), Auto)
		}
		info := d.Probe(ctx)
		if !info.Available {
			return info, "", errdefs.FailedPrecondition("vmm %q cannot run on this host: %s", requested, info.Reason)
		}
		return info, "requested: " + info.Reason, nil
	}
	var skipped []string
	for _, kind := range AutoOrder {
		d, ok := reg[kind]
		if !ok {
			continue
		}
		info := d.Probe(ctx)
		if !info.Available {
			skipped = append(skipped, fmt.Sprintf("%s unavailable: %s", kind, info.Reason))
			continue
		}
		reason := "auto: " + info.Reason
		if len(skipped) > 0 {
			reason += " (" + strings.Join(skipped, "; ") + ")"
		}
		return info, reason, nil
	}
	return Info{}, "", errdefs.FailedPrecondition("no vmm can run on this host: %s", strings.Join(skipped, "; "))
}
