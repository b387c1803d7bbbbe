package client

import (
	"context"
	"net/http"

	"github.com/banger-vm/banger/api"
)

// PauseVM freezes a running VM's vCPUs (a paused VM is left as is).
func (c *Client) PauseVM(ctx context.Context, vm string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/pause", nil, &out)
}

// ResumeVM lets a paused VM run again (a running VM is left as is).
func (c *Client) ResumeVM(ctx context.Context, vm string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/resume", nil, &out)
}

// CreateSnapshot saves vm's memory, device state and disk as a snapshot.
func (c *Client) CreateSnapshot(ctx context.Context, vm string, req api.CreateSnapshotRequest) (api.Snapshot, error) {
	var out api.Snapshot
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/snapshots", req, &out)
}

// RestoreVM takes vm back to the instant of snapshot.
func (c *Client) RestoreVM(ctx context.Context, vm, snapshot string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/restore", api.RestoreRequest{Snapshot: snapshot}, &out)
}

func (c *Client) ListSnapshots(ctx context.Context) ([]api.Snapshot, error) {
	var out []api.Snapshot
	return out, c.do(ctx, http.MethodGet, "/snapshots", nil, &out)
}

func (c *Client) GetSnapshot(ctx context.Context, snapshot string) (api.Snapshot, error) {
	var out api.Snapshot
	return out, c.do(ctx, http.MethodGet, "/snapshots"+ref(snapshot), nil, &out)
}

func (c *Client) DeleteSnapshot(ctx context.Context, snapshot string) error {
	return c.do(ctx, http.MethodDelete, "/snapshots"+ref(snapshot), nil, nil)
}

// ForkVM snapshots vm and starts a new VM from that instant with its own
// identity.
func (c *Client) ForkVM(ctx context.Context, vm string, req api.ForkVMRequest) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/fork", req, &out)
}

// WarmImage boots image once and keeps a snapshot of it that vm create
// restores instead of booting.
func (c *Client) WarmImage(ctx context.Context, image string, req api.WarmImageRequest) (api.Snapshot, error) {
	var out api.Snapshot
	return out, c.do(ctx, http.MethodPost, "/images"+ref(image)+"/warm", req, &out)
}

// ReidentifyVM gives vm's running guest new host keys and machine ID
// (and with req.NewIP a new address) through its agent.
func (c *Client) ReidentifyVM(ctx context.Context, vm string, req api.ReidentifyRequest) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/reidentify", req, &out)
}
