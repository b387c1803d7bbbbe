package main

import (
	"fmt"
	"io"
	"maps"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/cmd/internal/cli"
)

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func renderVMs(w io.Writer, format string, vms []api.VMSummary) error {
	if format == "json" {
		return cli.WriteJSON(w, vms)
	}
	t := cli.Table(w)
	fmt.Fprintln(t, "NAME\tID\tSTATE\tVMM\tVCPUS\tMEMORY\tIP\tIMAGE\tPID\tOWNER")
	owners := map[int]string{} // one user lookup per owner, not per row
	ownerName := func(uid int) string {
		n, ok := owners[uid]
		if !ok {
			n = ownerName(uid)
			owners[uid] = n
		}
		return n
	}
	for _, v := range vms {
		pid := "-"
		if v.Runtime.PID != 0 {
			pid = strconv.Itoa(v.Runtime.PID)
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\t%s\n", v.Name, short(v.ID), v.State, v.VMM, v.VCPUs, v.MemoryMiB, dash(v.GuestIP), dash(v.Image), pid, ownerName(v.OwnerUID))
	}
	return t.Flush()
}

// ownerName is the user name of uid, else the number.
func ownerName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

func renderVM(w io.Writer, format string, v api.VM) error {
	if format == "json" {
		return cli.WriteJSON(w, v)
	}
	t := cli.Table(w)
	row := func(k, val string) { fmt.Fprintf(t, "%s:\t%s\n", k, val) }
	row("Name", v.Name)
	row("ID", v.ID)
	row("State", v.State)
	if v.LastError != "" {
		row("Last error", v.LastError)
	}
	row("VMM", v.VMM)
	if v.VMMReason != "" {
		row("VMM reason", v.VMMReason)
	}
	row("Image", fmt.Sprintf("%s (%s)", dash(v.Image), short(v.ImageID)))
	row("vCPUs", strconv.Itoa(v.VCPUs))
	row("Memory", fmt.Sprintf("%d MiB", v.MemoryMiB))
	row("Disk", bytesIEC(v.DiskBytes))
	if v.DiskStrategy != "" {
		strategy := v.DiskStrategy
		if v.DiskReason != "" {
			strategy += " (" + v.DiskReason + ")"
		}
		row("Disk strategy", strategy)
	}
	row("Guest IP", dash(v.GuestIP))
	row("Network", netSummary(v.Network))
	if v.Runtime.PID != 0 {
		row("PID", strconv.Itoa(v.Runtime.PID))
		row("Accel", dash(v.Runtime.Accel))
		row("Started", v.Runtime.StartedAt.Local().Format(time.RFC3339))
	}
	if v.Runtime.ControlSocket != "" {
		row("Control socket", v.Runtime.ControlSocket)
	}
	if v.Runtime.Tap != "" {
		row("Tap", v.Runtime.Tap)
	}
	if v.Runtime.VsockCID != 0 {
		row("Vsock", fmt.Sprintf("cid %d at %s", v.Runtime.VsockCID, v.Runtime.VsockPath))
	}
	for _, k := range slices.Sorted(maps.Keys(v.Unsupported)) {
		row("Unsupported", fmt.Sprintf("%s: %s", k, v.Unsupported[k]))
	}
	if v.LastExit != nil {
		row("Last exit", "vmm "+v.LastExit.Reason)
	}
	if v.Agent != "" {
		row("Agent", v.Agent)
	}
	if o := v.Origin; o != nil {
		row("Origin", originSummary(*o))
	}
	row("Log", v.LogPath)
	row("Dir", v.VMDir)
	row("Created", v.CreatedAt.Local().Format(time.RFC3339))
	row("Updated", v.UpdatedAt.Local().Format(time.RFC3339))
	if err := t.Flush(); err != nil {
		return err
	}
	if v.LastOperation != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Last operation:")
		return renderOpDetail(w, *v.LastOperation)
	}
	return nil
}

func renderOps(w io.Writer, format string, ops []api.Operation) error {
	if format == "json" {
		return cli.WriteJSON(w, ops)
	}
	for i, op := range ops {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := renderOpDetail(w, op); err != nil {
			return err
		}
	}
	return nil
}

func renderOpDetail(w io.Writer, op api.Operation) error {
	dur := "running"
	if !op.EndedAt.IsZero() {
		dur = (time.Duration(op.DurationMS) * time.Millisecond).String()
	}
	fmt.Fprintf(w, "  %s  %s  %s  %s\n", op.StartedAt.Local().Format(time.RFC3339), op.Kind, op.Status, dur)
	if op.Error != "" {
		fmt.Fprintf(w, "    error: %s\n", op.Error)
	}
	t := cli.Table(w)
	for _, st := range op.Stages {
		at := "+" + st.At.Sub(op.StartedAt).Round(time.Millisecond).String()
		fmt.Fprintf(t, "    %s\t%s\t%s\t%s\n", at, st.Name, st.Status, st.Detail)
	}
	return t.Flush()
}

func renderImages(w io.Writer, format string, ims []api.Image) error {
	if format == "json" {
		return cli.WriteJSON(w, ims)
	}
	t := cli.Table(w)
	fmt.Fprintln(t, "NAME\tID\tROOTFS\tINITRD\tCREATED")
	for _, im := range ims {
		initrd := "no"
		if im.InitrdPath != "" {
			initrd = "yes"
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\n", im.Name, short(im.ID), bytesIEC(im.RootfsBytes), initrd, im.CreatedAt.Local().Format(time.RFC3339))
	}
	return t.Flush()
}

func renderImage(w io.Writer, format string, im api.Image) error {
	if format == "json" {
		return cli.WriteJSON(w, im)
	}
	t := cli.Table(w)
	row := func(k, val string) { fmt.Fprintf(t, "%s:\t%s\n", k, val) }
	row("Name", im.Name)
	row("ID", im.ID)
	row("Kernel", im.KernelPath)
	row("Initrd", dash(im.InitrdPath))
	row("Rootfs", fmt.Sprintf("%s (%s)", im.RootfsPath, bytesIEC(im.RootfsBytes)))
	row("Cmdline", dash(im.Cmdline))
	row("Created", im.CreatedAt.Local().Format(time.RFC3339))
	row("Used by", dash(strings.Join(im.UsedBy, ", ")))
	if err := t.Flush(); err != nil {
		return err
	}
	if im.Manifest != nil {
		fmt.Fprintln(w, "Manifest:")
		return renderManifest(w, im.Name, im.Manifest)
	}
	return nil
}

// renderManifest prints a built image's manifest; its package list is
// counted, not listed (it has some 150 entries): -o json has every package.
func renderManifest(w io.Writer, image string, m *api.ImageManifest) error {
	t := cli.Table(w)
	row := func(k, val string) { fmt.Fprintf(t, "  %s:\t%s\n", k, val) }
	row("Release", fmt.Sprintf("%s (%s)", m.Release, m.Mirror))
	row("Kernel", fmt.Sprintf("%s (%s %s)", m.KernelVersion, m.KernelPackage, m.KernelPackageVersion))
	row("Kernel args", m.KernelCmdline)
	row("Built", fmt.Sprintf("%s in %.1fs", m.BuiltAt.Local().Format(time.RFC3339), m.DurationSeconds))
	for i, a := range m.Artifacts {
		key := ""
		if i == 0 {
			key = "Artifacts:"
		}
		fmt.Fprintf(t, "  %s\t%s  %s  sha256:%s\n", key, a.Name, bytesIEC(a.Size), a.SHA256)
	}
	row("Packages", fmt.Sprintf("%d (each with its version: banger image show %s -o json)", len(m.Packages), image))
	return t.Flush()
}

func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// originSummary is vm show's Origin line: "warm start from snapshot
// "warm-default-..." (restored at the first start)".
func originSummary(o api.Origin) string {
	what := "fork of snapshot"
	if o.Warm {
		what = "warm start from image snapshot"
	}
	when := "restored at its first start"
	if o.Pending {
		when = "its first start restores it"
	}
	return fmt.Sprintf("%s %q (%s): %s", what, o.Snapshot, short(o.SnapshotID), when)
}
