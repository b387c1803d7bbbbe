package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
)

// DMSnapshot is the seed's design: at VM start a read-only loop device of
// the image's root (the origin), a loop device of the VM's sparse COW file,
// and a persistent device-mapper snapshot fc-rootfs-<short> over both,
// which the VMM opens as a raw block device; at stop all three are torn
// down. The COW file keeps the VM's writes between starts. A disk larger
// than its image gets a per-VM origin fc-origin-<short> that appends zeros
// to the image (a snapshot cannot outgrow its origin); its ext4 is grown
// once, at create, through the snapshot.
type DMSnapshot struct{ opts Options }

var _ Backend = (*DMSnapshot)(nil)

func (*DMSnapshot) Kind() Kind { return KindDMSnapshot }

const (
	sector           = 512
	dmChunkSectors   = 8 // 4 KiB COW chunks
	dmChunkBytes     = dmChunkSectors * sector
	loopMajor        = 7
	dmSnapshotPrefix = "fc-rootfs-"
	dmOriginPrefix   = "fc-origin-"
)

func dmSnapshotName(vmID string) string { return layout.DMName(model.ShortID(vmID)) }
func dmOriginName(vmID string) string   { return dmOriginPrefix + model.ShortID(vmID) }
func dmPath(name string) string         { return "/dev/mapper/" + name }

// snapshotTable is the seed's table: the whole disk is a persistent
// snapshot of origin, its exceptions stored on cow in 8-sector chunks.
func snapshotTable(origin, cow string, sectors int64) string {
	return fmt.Sprintf("0 %d snapshot %s %s P %d\n", sectors, origin, cow, dmChunkSectors)
}

// originTable extends the image's loop device with zeros up to the disk size.
func originTable(imageLoop string, imageSectors, sectors int64) string {
	return fmt.Sprintf("0 %d linear %s 0\n%d %d zero\n", imageSectors, imageLoop, imageSectors, sectors-imageSectors)
}

func losetupImageCmd(image string) Cmd {
	return Cmd{Name: "losetup", Args: []string{"--find", "--show", "--read-only", image}}
}
func losetupCOWCmd(cow string) Cmd {
	return Cmd{Name: "losetup", Args: []string{"--find", "--show", cow}}
}
func losetupDetachCmd(dev string) Cmd {
	return Cmd{Name: "losetup", Args: []string{"--detach", dev}}
}
func losetupListCmd() Cmd {
	return Cmd{Name: "losetup", Args: []string{"--list", "--json", "--output", "NAME,BACK-FILE"}}
}
func dmCreateCmd(name, table string) Cmd {
	return Cmd{Name: "dmsetup", Args: []string{"create", name}, Stdin: table}
}
func dmRemoveCmd(name string) Cmd  { return Cmd{Name: "dmsetup", Args: []string{"remove", name}} }
func dmTableCmd(name string) Cmd   { return Cmd{Name: "dmsetup", Args: []string{"table", name}} }
func dmSuspendCmd(name string) Cmd { return Cmd{Name: "dmsetup", Args: []string{"suspend", name}} }
func dmResumeCmd(name string) Cmd  { return Cmd{Name: "dmsetup", Args: []string{"resume", name}} }
func dmListCmd() Cmd {
	return Cmd{Name: "dmsetup", Args: []string{"info", "-c", "--noheadings", "-o", "name"}}
}

// cowBytes sizes the COW file so that every chunk of the disk can be
// written: one 4 KiB header chunk, the data chunks, and one metadata chunk
// per 256 exceptions (16 bytes each), plus one spare. It is sparse.
func cowBytes(size int64) int64 {
	chunks := (size + dmChunkBytes - 1) / dmChunkBytes
	return (1 + chunks + (chunks+255)/256 + 1) * dmChunkBytes
}

func (m *DMSnapshot) Create(ctx context.Context, d Disk) (err error) {
	imgSize, err := imageSize(d)
	if err != nil {
		return err
	}
	if imgSize%sector != 0 || d.Size%sector != 0 {
		return fmt.Errorf("image (%d bytes) and disk (%d bytes) sizes must be multiples of 512 for a device-mapper snapshot: %w", imgSize, d.Size, errdefs.ErrInvalidArgument)
	}
	f, err := os.OpenFile(d.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create vm cow file: %w", err)
	}
	defer func() {
		if err != nil {
			if rerr := os.Remove(d.Path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				m.opts.log().Warn("remove vm cow file after failed create", "vm", d.VMID, "path", d.Path, "err", rerr)
			}
		}
	}()
	err = errors.Join(f.Chmod(0o600), f.Truncate(cowBytes(d.Size)), f.Close())
	if err != nil || d.Size == imgSize {
		return err
	}
	// Grow the ext4 once, through the snapshot: the new metadata lands in
	// the COW file, the image is untouched.
	a, err := m.Attach(ctx, d)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, m.Detach(context.WithoutCancel(ctx), d)) }()
	return growExt4(ctx, a.Path)
}

// dmNames lists the device-mapper devices.
func (m *DMSnapshot) dmNames(ctx context.Context) (map[string]bool, error) {
	out, err := m.opts.run(ctx, dmListCmd())
	if err != nil {
		return nil, err
	}
	return parseDMNames(string(out)), nil
}

func parseDMNames(out string) map[string]bool {
	names := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && l != "No devices found" {
			names[l] = true
		}
	}
	return names
}

func (m *DMSnapshot) Attach(ctx context.Context, d Disk) (_ Attachment, err error) {
	snap, orig := dmSnapshotName(d.VMID), dmOriginName(d.VMID)
	names, err := m.dmNames(ctx)
	if err != nil {
		return Attachment{}, err
	}
	if names[snap] { // set up before a daemon restart
		return Attachment{Path: dmPath(snap), Format: FormatRaw}, nil
	}
	if names[orig] {
		// A crash between the two creates: start again.
		if err := m.Detach(ctx, d); err != nil {
			return Attachment{}, err
		}
	}
	imgSize, err := imageSize(d)
	if err != nil {
		return Attachment{}, err
	}
	if _, err := os.Stat(d.Path); err != nil {
		return Attachment{}, fmt.Errorf("vm cow file: %w", err)
	}
	var undo []Cmd
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				if _, uerr := m.opts.run(context.WithoutCancel(ctx), undo[i]); uerr != nil {
					m.opts.log().Warn("undo dm-snapshot attach", "vm", d.VMID, "cmd", undo[i].String(), "err", uerr)
				}
			}
		}
	}()
	out, err := m.opts.run(ctx, losetupImageCmd(d.Image))
	if err != nil {
		return Attachment{}, err
	}
	imageLoop := strings.TrimSpace(string(out))
	undo = append(undo, losetupDetachCmd(imageLoop))
	out, err = m.opts.run(ctx, losetupCOWCmd(d.Path))
	if err != nil {
		return Attachment{}, err
	}
	cowLoop := strings.TrimSpace(string(out))
	undo = append(undo, losetupDetachCmd(cowLoop))
	origin := imageLoop
	if d.Size > imgSize {
		if _, err := m.opts.run(ctx, dmCreateCmd(orig, originTable(imageLoop, imgSize/sector, d.Size/sector))); err != nil {
			return Attachment{}, err
		}
		undo = append(undo, dmRemoveCmd(orig))
		origin = dmPath(orig)
	}
	if _, err := m.opts.run(ctx, dmCreateCmd(snap, snapshotTable(origin, cowLoop, d.Size/sector))); err != nil {
		return Attachment{}, err
	}
	return Attachment{Path: dmPath(snap), Format: FormatRaw}, nil
}

// tableDevices returns the loop devices a table line uses (major 7),
// as /dev/loopN paths.
func tableDevices(table string) []string {
	var devs []string
	for _, l := range strings.Split(table, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		var args []string
		switch f[2] {
		case "snapshot":
			args = f[3:min(5, len(f))]
		case "linear":
			args = f[3:4]
		}
		for _, a := range args {
			if dev, ok := loopDev(a); ok {
				devs = append(devs, dev)
			}
		}
	}
	return devs
}

// loopDev maps "7:N" (how dmsetup prints a device) to /dev/loopN.
func loopDev(majMin string) (string, bool) {
	if strings.HasPrefix(majMin, "/dev/loop") {
		return majMin, true
	}
	maj, minor, ok := strings.Cut(majMin, ":")
	if !ok || maj != strconv.Itoa(loopMajor) {
		return "", false
	}
	if _, err := strconv.Atoi(minor); err != nil {
		return "", false
	}
	return "/dev/loop" + minor, true
}

// Detach removes the snapshot, the origin and their loop devices, in that
// order. What is not there is skipped.
func (m *DMSnapshot) Detach(ctx context.Context, d Disk) error {
	names, err := m.dmNames(ctx)
	if err != nil {
		return err
	}
	return m.detachNames(ctx, names, dmSnapshotName(d.VMID), dmOriginName(d.VMID), d.Path)
}

func (m *DMSnapshot) detachNames(ctx context.Context, names map[string]bool, snap, orig, cow string) error {
	var loops []string
	var errs []error
	for _, name := range []string{snap, orig} {
		if !names[name] {
			continue
		}
		out, err := m.opts.run(ctx, dmTableCmd(name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := m.opts.run(ctx, dmRemoveCmd(name)); err != nil {
			errs = append(errs, err)
			continue
		}
		loops = append(loops, tableDevices(string(out))...)
	}
	if cow != "" { // a COW loop left by a crash before the snapshot existed
		if all, err := m.loops(ctx); err == nil {
			for dev, back := range all {
				if back == cow && !contains(loops, dev) {
					loops = append(loops, dev)
				}
			}
		}
	}
	for _, dev := range loops {
		if _, err := m.opts.run(ctx, losetupDetachCmd(dev)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func contains(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// loops maps each loop device to its backing file.
func (m *DMSnapshot) loops(ctx context.Context) (map[string]string, error) {
	out, err := m.opts.run(ctx, losetupListCmd())
	if err != nil {
		return nil, err
	}
	return parseLoops(out)
}

func parseLoops(out []byte) (map[string]string, error) {
	loops := map[string]string{}
	if len(strings.TrimSpace(string(out))) == 0 {
		return loops, nil // losetup prints nothing when there are none
	}
	var l struct {
		Devices []struct {
			Name     string `json:"name"`
			BackFile string `json:"back-file"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		return nil, fmt.Errorf("parse losetup --list: %w", err)
	}
	for _, d := range l.Devices {
		loops[d.Name] = strings.TrimSuffix(d.BackFile, " (deleted)")
	}
	return loops, nil
}

// Clone copies the COW file: with the same image as origin it is a
// snapshot holding d's content at this instant. An attached snapshot is
// suspended (its writes flushed to the COW file) for the copy.
func (m *DMSnapshot) Clone(ctx context.Context, d Disk, dst string) (err error) {
	names, err := m.dmNames(ctx)
	if err != nil {
		return err
	}
	if snap := dmSnapshotName(d.VMID); names[snap] {
		if _, err := m.opts.run(ctx, dmSuspendCmd(snap)); err != nil {
			return err
		}
		defer func() {
			if _, rerr := m.opts.run(context.WithoutCancel(ctx), dmResumeCmd(snap)); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}()
	}
	return copyFile(ctx, d.Path, dst)
}

func (m *DMSnapshot) Remove(ctx context.Context, d Disk) error {
	if err := m.Detach(ctx, d); err != nil {
		return err
	}
	return removeFile(d.Path)
}
