package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/model"
)

const vmColumns = `id, name, image_id, vcpus, memory_mib, disk_bytes, vmm, vmm_reason, state, guest_ip,
	vm_dir, log_path, last_error, ports, host_key, pid, pid_start_time, control_socket, vsock_path, vsock_cid,
	tap, dm_name, accel, started_at, created_at, updated_at,
	disk_strategy, disk_reason, last_exit, owner_uid, agent_socket, net_policy, memory_file`

type scanner interface{ Scan(...any) error }

func scanVM(r scanner) (*model.VM, error) {
	var (
		v                         model.VM
		ip                        sql.NullString
		started, created, updated int64
		state, ports              string
		lastExit, netPolicy       string
	)
	err := r.Scan(&v.ID, &v.Name, &v.ImageID, &v.VCPUs, &v.MemoryMiB, &v.DiskBytes, &v.VMM, &v.VMMReason, &state, &ip,
		&v.VMDir, &v.LogPath, &v.LastError, &ports, &v.HostKey, &v.Runtime.PID, &v.Runtime.PIDStartTime, &v.Runtime.ControlSocket,
		&v.Runtime.VsockPath, &v.Runtime.VsockCID, &v.Runtime.Tap, &v.Runtime.DMName, &v.Runtime.Accel,
		&started, &created, &updated,
		&v.DiskStrategy, &v.DiskReason, &lastExit, &v.OwnerUID, &v.Runtime.AgentSocket, &netPolicy, &v.Runtime.MemoryFile)
	if err != nil {
		return nil, err
	}
	if lastExit != "" {
		v.LastExit = new(model.Exit)
		if err := json.Unmarshal([]byte(lastExit), v.LastExit); err != nil {
			return nil, fmt.Errorf("vm %s last exit: %w", v.ID, err)
		}
	}
	if err := json.Unmarshal([]byte(ports), &v.Ports); err != nil {
		return nil, fmt.Errorf("vm %s ports: %w", v.ID, err)
	}
	if err := json.Unmarshal([]byte(netPolicy), &v.NetPolicy); err != nil {
		return nil, fmt.Errorf("vm %s network policy: %w", v.ID, err)
	}
	v.State = model.VMState(state)
	v.GuestIP = ip.String
	v.Runtime.StartedAt = fromNanos(started)
	v.CreatedAt = fromNanos(created)
	v.UpdatedAt = fromNanos(updated)
	return &v, nil
}

func portsJSON(p []model.PortMapping) string {
	if len(p) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(p) // plain struct: cannot fail
	return string(b)
}

func exitJSON(e *model.Exit) string {
	if e == nil {
		return ""
	}
	b, _ := json.Marshal(e) // plain struct: cannot fail
	return string(b)
}

// netPolicyJSON: the network policy column ("{}" is the default policy).
func netPolicyJSON(p model.NetPolicy) string {
	b, _ := json.Marshal(p) // plain struct: cannot fail
	return string(b)
}

func nullIP(ip string) sql.NullString { return sql.NullString{String: ip, Valid: ip != ""} }

// InsertVM records a new VM. Its name and guest IP must be unused.
func (t *Tx) InsertVM(ctx context.Context, v *model.VM) error {
	now := time.Now().UTC()
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now
	}
	v.UpdatedAt = now
	_, err := t.tx.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		v.ID, v.Name, v.ImageID, v.VCPUs, v.MemoryMiB, v.DiskBytes, v.VMM, v.VMMReason, string(v.State), nullIP(v.GuestIP),
		v.VMDir, v.LogPath, v.LastError, portsJSON(v.Ports), v.HostKey, v.Runtime.PID, v.Runtime.PIDStartTime, v.Runtime.ControlSocket,
		v.Runtime.VsockPath, v.Runtime.VsockCID, v.Runtime.Tap, v.Runtime.DMName, v.Runtime.Accel,
		nanos(v.Runtime.StartedAt), nanos(v.CreatedAt), nanos(v.UpdatedAt),
		v.DiskStrategy, v.DiskReason, exitJSON(v.LastExit), v.OwnerUID, v.Runtime.AgentSocket, netPolicyJSON(v.NetPolicy), v.Runtime.MemoryFile)
	if isUnique(err) {
		return t.whichVMConflict(ctx, v)
	}
	if err != nil {
		return fmt.Errorf("insert vm %q: %w", v.Name, err)
	}
	return nil
}

func (t *Tx) whichVMConflict(ctx context.Context, v *model.VM) error {
	var n int
	if err := t.tx.QueryRowContext(ctx, `SELECT count(*) FROM vms WHERE name = ?`, v.Name).Scan(&n); err == nil && n > 0 {
		return errdefs.AlreadyExists("vm %q already exists (hint: pick another name, or delete it first)", v.Name)
	}
	if v.GuestIP != "" {
		if err := t.tx.QueryRowContext(ctx, `SELECT count(*) FROM vms WHERE guest_ip = ?`, v.GuestIP).Scan(&n); err == nil && n > 0 {
			return errdefs.AlreadyExists("guest ip %s is already leased to another vm", v.GuestIP)
		}
	}
	return errdefs.AlreadyExists("vm id %s already exists", v.ID)
}

// UpdateVM writes every field of v and bumps UpdatedAt.
func (t *Tx) UpdateVM(ctx context.Context, v *model.VM) error {
	v.UpdatedAt = time.Now().UTC()
	res, err := t.tx.ExecContext(ctx, `UPDATE vms SET name=?, image_id=?, vcpus=?, memory_mib=?, disk_bytes=?,
		vmm=?, vmm_reason=?, state=?, guest_ip=?, vm_dir=?, log_path=?, last_error=?, ports=?, host_key=?, pid=?, pid_start_time=?,
		control_socket=?, vsock_path=?, vsock_cid=?, tap=?, dm_name=?, accel=?, started_at=?, updated_at=?,
		disk_strategy=?, disk_reason=?, last_exit=?, owner_uid=?, agent_socket=?, net_policy=?, memory_file=?
		WHERE id=?`,
		v.Name, v.ImageID, v.VCPUs, v.MemoryMiB, v.DiskBytes, v.VMM, v.VMMReason, string(v.State), nullIP(v.GuestIP),
		v.VMDir, v.LogPath, v.LastError, portsJSON(v.Ports), v.HostKey, v.Runtime.PID, v.Runtime.PIDStartTime, v.Runtime.ControlSocket,
		v.Runtime.VsockPath, v.Runtime.VsockCID, v.Runtime.Tap, v.Runtime.DMName, v.Runtime.Accel,
		nanos(v.Runtime.StartedAt), nanos(v.UpdatedAt),
		v.DiskStrategy, v.DiskReason, exitJSON(v.LastExit), v.OwnerUID, v.Runtime.AgentSocket, netPolicyJSON(v.NetPolicy), v.Runtime.MemoryFile, v.ID)
	if isUnique(err) {
		return t.whichVMConflict(ctx, v)
	}
	if err != nil {
		return fmt.Errorf("update vm %q: %w", v.Name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errdefs.NotFound("vm %q not found", v.Name)
	}
	return nil
}

// GetVM returns the VM with exactly this ID.
func (t *Tx) GetVM(ctx context.Context, id string) (*model.VM, error) {
	v, err := scanVM(t.tx.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE id = ?`, id))
	if err != nil {
		return nil, notFound(err, "vm %q not found", id)
	}
	return v, nil
}

var hexPrefix = regexp.MustCompile(`^[0-9a-f]+$`)

// MinPrefix is the shortest ID prefix accepted as a reference.
const MinPrefix = 4

// ResolveVM finds a VM by exact ID, then exact name, then unique ID prefix.
func (t *Tx) ResolveVM(ctx context.Context, ref string) (*model.VM, error) {
	if ref == "" {
		return nil, errdefs.InvalidArgument("empty vm reference (hint: give a vm name or id)")
	}
	v, err := scanVM(t.tx.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1`, ref, ref, ref))
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	if len(ref) >= MinPrefix && hexPrefix.MatchString(ref) {
		rows, err := t.tx.QueryContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE substr(id, 1, ?) = ? LIMIT 2`, len(ref), ref)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var found []*model.VM
		for rows.Next() {
			v, err := scanVM(rows)
			if err != nil {
				return nil, err
			}
			found = append(found, v)
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 2:
			return nil, errdefs.InvalidArgument("vm id prefix %q is ambiguous (hint: give more characters, or the name)", ref)
		}
	}
	return nil, errdefs.NotFound("vm %q not found (hint: banger vm list shows the vms)", ref)
}

// ListVMs returns every VM, oldest first.
func (t *Tx) ListVMs(ctx context.Context) ([]*model.VM, error) {
	return t.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms ORDER BY created_at, id`)
}

// ListVMsClaimingRuntime returns the VMs whose record says they may hold
// something on the host: starting, running, paused, stopping, creating, or in error
// with a runtime kept. Stopped VMs (the bulk of a fleet) are not read.
func (t *Tx) ListVMsClaimingRuntime(ctx context.Context) ([]*model.VM, error) {
	return t.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms
		WHERE state IN ('starting', 'running', 'stopping', 'creating', 'paused')
		   OR (state = 'error' AND (pid != 0 OR control_socket != '' OR vsock_path != '' OR agent_socket != '' OR memory_file != '' OR tap != '' OR dm_name != ''))
		ORDER BY created_at, id`)
}

// VMsUsingImage returns the VMs made from image id.
func (t *Tx) VMsUsingImage(ctx context.Context, imageID string) ([]*model.VM, error) {
	return t.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE image_id = ? ORDER BY name`, imageID)
}

// VMNamesUsingImage returns the names of the VMs made from image id.
func (t *Tx) VMNamesUsingImage(ctx context.Context, imageID string) ([]string, error) {
	return t.queryStrings(ctx, `SELECT name FROM vms WHERE image_id = ? ORDER BY name`, imageID)
}

// queryStrings runs q, whose rows are one text column, and returns them.
func (t *Tx) queryStrings(ctx context.Context, q string, args ...any) ([]string, error) {
	rows, err := t.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

func (t *Tx) queryVMs(ctx context.Context, q string, args ...any) ([]*model.VM, error) {
	rows, err := t.tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*model.VM
	for rows.Next() {
		v, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// UsedGuestIPs returns every leased guest IP.
func (t *Tx) UsedGuestIPs(ctx context.Context) ([]string, error) {
	rows, err := t.tx.QueryContext(ctx, `SELECT guest_ip FROM vms WHERE guest_ip IS NOT NULL`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var ip string
		if err := rows.Scan(&ip); err != nil {
			return nil, err
		}
		out = append(out, ip)
	}
	return out, rows.Err()
}

// ShortIDTaken reports whether an existing VM's ID starts with short.
func (t *Tx) ShortIDTaken(ctx context.Context, short string) (bool, error) {
	var n int
	err := t.tx.QueryRowContext(ctx, `SELECT count(*) FROM vms WHERE substr(id, 1, ?) = ?`, len(short), short).Scan(&n)
	return n > 0, err
}

// DeleteVM removes the VM record and its operations.
func (t *Tx) DeleteVM(ctx context.Context, id string) error {
	res, err := t.tx.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete vm %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errdefs.NotFound("vm %q not found", id)
	}
	return nil
}

// Convenience wrappers for single-statement use.

func (s *Store) GetVM(ctx context.Context, id string) (*model.VM, error) {
	return view(ctx, s, func(t *Tx) (*model.VM, error) { return t.GetVM(ctx, id) })
}

func (s *Store) ResolveVM(ctx context.Context, ref string) (*model.VM, error) {
	return view(ctx, s, func(t *Tx) (*model.VM, error) { return t.ResolveVM(ctx, ref) })
}

func (s *Store) ListVMs(ctx context.Context) ([]*model.VM, error) {
	return view(ctx, s, func(t *Tx) ([]*model.VM, error) { return t.ListVMs(ctx) })
}

func (s *Store) ListVMsClaimingRuntime(ctx context.Context) ([]*model.VM, error) {
	return view(ctx, s, func(t *Tx) ([]*model.VM, error) { return t.ListVMsClaimingRuntime(ctx) })
}

func (s *Store) UpdateVM(ctx context.Context, v *model.VM) error {
	return s.Transaction(ctx, func(t *Tx) error { return t.UpdateVM(ctx, v) })
}

func (s *Store) DeleteVM(ctx context.Context, id string) error {
	return s.Transaction(ctx, func(t *Tx) error { return t.DeleteVM(ctx, id) })
}

// names lists VM names for messages.
func names(vms []*model.VM) string {
	n := make([]string, len(vms))
	for i, v := range vms {
		n[i] = fmt.Sprintf("%q", v.Name)
	}
	return strings.Join(n, ", ")
}
