package store

import (
	"context"
	"database/sql"

	"github.com/banger-vm/banger/internal/model"
)

// ListVMSummaries returns every VM's listed fields with its image's name,
// oldest first: one query that reads only the columns `vm list` shows.
func (t *Tx) ListVMSummaries(ctx context.Context) ([]model.VMSummary, error) {
	rows, err := t.tx.QueryContext(ctx, `SELECT v.id, v.name, v.state, v.vmm, v.vcpus, v.memory_mib, coalesce(v.guest_ip, ''),
		coalesce(i.name, ''), v.pid, v.owner_uid
		FROM vms v LEFT JOIN images i ON i.id = v.image_id ORDER BY v.created_at, v.id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.VMSummary
	for rows.Next() {
		var (
			v     model.VMSummary
			state string
		)
		if err := rows.Scan(&v.ID, &v.Name, &state, &v.VMM, &v.VCPUs, &v.MemoryMiB, &v.GuestIP, &v.Image, &v.PID, &v.OwnerUID); err != nil {
			return nil, err
		}
		v.State = model.VMState(state)
		out = append(out, v)
	}
	return out, rows.Err()
}

// ListVMRefs returns every VM's id, name, guest IP and directory: what the
// start-up sweep needs to tell leftovers of deleted VMs from live ones.
func (t *Tx) ListVMRefs(ctx context.Context) ([]model.VMRef, error) {
	rows, err := t.tx.QueryContext(ctx, `SELECT id, name, guest_ip, vm_dir FROM vms`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []model.VMRef
	for rows.Next() {
		var (
			r  model.VMRef
			ip sql.NullString
		)
		if err := rows.Scan(&r.ID, &r.Name, &ip, &r.VMDir); err != nil {
			return nil, err
		}
		r.GuestIP = ip.String
		out = append(out, r)
	}
	return out, rows.Err()
}

func (s *Store) ListVMSummaries(ctx context.Context) ([]model.VMSummary, error) {
	return view(ctx, s, func(t *Tx) ([]model.VMSummary, error) { return t.ListVMSummaries(ctx) })
}

func (s *Store) ListVMRefs(ctx context.Context) ([]model.VMRef, error) {
	return view(ctx, s, func(t *Tx) ([]model.VMRef, error) { return t.ListVMRefs(ctx) })
}
