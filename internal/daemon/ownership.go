package daemon

import (
	"context"
	"slices"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
)

// Ownership. Every VM and image records the uid of the API client that
// made it (SO_PEERCRED, put in the request's context by the server with
// WithCaller). A caller other than root sees and acts on its own VMs and
// images only; root, and the daemon itself (no caller in the context:
// reconcile, watchers), on all. The check is in the service's resolution
// (resolveVM, and the image lookups), so every route gets it. Images root
// made are shared bases: anyone may create a VM from them.

type callerKey struct{}

// WithCaller records the uid of the client a request comes from; -1: not
// known (treated as an unprivileged stranger).
func WithCaller(ctx context.Context, uid int) context.Context {
	return context.WithValue(ctx, callerKey{}, uid)
}

// callerUID is the requesting uid, and whether the request has a caller
// at all (no caller: the daemon's own work, which may do anything).
func callerUID(ctx context.Context) (int, bool) {
	uid, ok := ctx.Value(callerKey{}).(int)
	return uid, ok
}

// privileged: root, or the daemon itself.
func privileged(ctx context.Context) bool {
	uid, ok := callerUID(ctx)
	return !ok || uid == 0
}

// ownerUID is the uid a new VM or image is recorded with.
func ownerUID(ctx context.Context) int {
	if uid, ok := callerUID(ctx); ok && uid > 0 {
		return uid
	}
	return 0
}

func mayAccess(ctx context.Context, owner int) bool {
	uid, _ := callerUID(ctx)
	return privileged(ctx) || uid == owner
}

// resolveVM resolves ref for the caller: another user's VM is refused.
func (s *Service) resolveVM(ctx context.Context, ref string) (*model.VM, error) {
	v, err := s.store.ResolveVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !mayAccess(ctx, v.OwnerUID) {
		uid, _ := callerUID(ctx)
		return nil, errdefs.PermissionDenied("vm %q belongs to another user (uid %d; you are uid %d): only its owner or root may see or act on it", ref, v.OwnerUID, uid)
	}
	return v, nil
}

// checkImageAccess refuses another user's image; verb says what was asked
// ("use" allows root's images, which are shared).
func checkImageAccess(ctx context.Context, im *model.Image, use bool) error {
	if mayAccess(ctx, im.OwnerUID) || (use && im.OwnerUID == 0) {
		return nil
	}
	uid, _ := callerUID(ctx)
	return errdefs.PermissionDenied("image %q belongs to another user (uid %d; you are uid %d): only its owner or root may see or act on it", im.Name, im.OwnerUID, uid)
}

// visibleVMs keeps the VMs the caller may see.
func visibleVMs(ctx context.Context, vms []model.VMSummary) []model.VMSummary {
	return slices.DeleteFunc(vms, func(v model.VMSummary) bool { return !mayAccess(ctx, v.OwnerUID) })
}

// visibleImages keeps the images the caller may see: its own and root's.
func visibleImages(ctx context.Context, ims []*model.Image) []*model.Image {
	return slices.DeleteFunc(ims, func(im *model.Image) bool { return checkImageAccess(ctx, im, true) != nil })
}

// PrivilegedPortLimit: host ports below it are root's to publish.
const PrivilegedPortLimit = 1024

// checkPortsAllowed refuses host ports below 1024 to a caller not root.
func checkPortsAllowed(ctx context.Context, ports []model.PortMapping) error {
	if privileged(ctx) {
		return nil
	}
	for _, p := range ports {
		if p.HostPort < PrivilegedPortLimit {
			return errdefs.PermissionDenied("host port %d/%s is below %d: only root may publish it (hint: use a host port of %d or more)", p.HostPort, p.Proto, PrivilegedPortLimit, PrivilegedPortLimit)
		}
	}
	return nil
}

// DefaultMaxUserBuildBytes is the largest image a user other than root
// may build (daemon flag --max-user-build-size).
const DefaultMaxUserBuildBytes = 8 << 30

// checkBuildSize refuses a build over the limit to a caller not root.
func (s *Service) checkBuildSize(ctx context.Context, size int64) error {
	limit := s.cfg.MaxUserBuildBytes
	if limit <= 0 {
		limit = DefaultMaxUserBuildBytes
	}
	if privileged(ctx) || size <= limit {
		return nil
	}
	return errdefs.PermissionDenied("an image of %d bytes is over the %d bytes users other than root may build (hint: a smaller --size, or ask root)", size, limit)
}
