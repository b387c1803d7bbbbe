package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-vm/banger/internal/model"
)

// Scope is where banger's disks and images live: only objects that point
// there are ever called orphans.
type Scope struct {
	VMsDir    string // one directory per VM id, holding its disk
	ImagesDir string // image roots, the origins of dm-snapshot loop devices
}

// Orphan is a host object a backend made that no VM owns any more.
type Orphan struct {
	Kind string `json:"kind"` // "dm-device", "loop-device" or "grow-mount"
	Name string `json:"name"` // dm name, /dev/loopN, or the mount point
	// Detail says what it points at, for the log.
	Detail string `json:"detail,omitempty"`
}

func under(dir, p string) (rel string, ok bool) {
	if dir == "" {
		return "", false
	}
	r, err := filepath.Rel(dir, p)
	if err != nil || r == "." || strings.HasPrefix(r, "..") {
		return "", false
	}
	return r, true
}

// FindOrphans lists, without changing anything, the dm devices, loop
// devices and grow mounts that belong to no VM in owned (full VM ids).
// Call it when no create, start or stop is in flight (daemon startup): a
// grow mount is always a crash's leftover, and an image loop device used
// by no snapshot of an owned VM is one too.
func FindOrphans(ctx context.Context, o Options, s Scope, owned []string) ([]Orphan, error) {
	shorts := map[string]bool{}
	for _, id := range owned {
		shorts[model.ShortID(id)] = true
	}
	var out []Orphan
	var errs []error
	m := &DMSnapshot{opts: o}
	used := map[string]bool{} // loop devices in owned VMs' tables
	if ok, _ := probeDM(o.dmControl()); ok {
		names, err := m.dmNames(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		for name := range names {
			short, ours := strings.CutPrefix(name, dmSnapshotPrefix)
			if !ours {
				short, ours = strings.CutPrefix(name, dmOriginPrefix)
			}
			if !ours {
				continue
			}
			if !shorts[short] {
				out = append(out, Orphan{Kind: "dm-device", Name: name})
				continue
			}
			table, err := o.run(ctx, dmTableCmd(name))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, dev := range tableDevices(string(table)) {
				used[dev] = true
			}
		}
	}
	loops, err := m.loops(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for dev, back := range loops {
		if used[dev] {
			continue
		}
		if rel, ok := under(s.VMsDir, back); ok {
			id := strings.Split(rel, string(filepath.Separator))[0]
			if !contains(owned, id) {
				out = append(out, Orphan{Kind: "loop-device", Name: dev, Detail: back})
			}
			continue
		}
		if _, ok := under(s.ImagesDir, back); ok {
			out = append(out, Orphan{Kind: "loop-device", Name: dev, Detail: back})
		}
	}
	mounts, err := growMounts(s.VMsDir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, mp := range mounts {
		out = append(out, Orphan{Kind: "grow-mount", Name: mp})
	}
	return out, errors.Join(errs...)
}

// growMounts lists the qcow2 grow views mounted under dir.
func growMounts(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if _, ok := under(dir, mp); ok && strings.HasSuffix(mp, ".grow-view") {
			out = append(out, mp)
		}
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(byte(c))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// RemoveOrphans removes what FindOrphans found: dm devices first (they
// hold the loop devices), then loop devices, then grow mounts. It keeps
// going past failures and joins them.
func RemoveOrphans(ctx context.Context, o Options, orphans []Orphan) error {
	var errs []error
	rank := func(x Orphan) int {
		switch {
		case x.Kind == "dm-device" && strings.HasPrefix(x.Name, dmSnapshotPrefix):
			return 0 // a snapshot holds its origin
		case x.Kind == "dm-device":
			return 1
		case x.Kind == "loop-device":
			return 2
		}
		return 3
	}
	for pass := 0; pass < 4; pass++ {
		for _, x := range orphans {
			if rank(x) != pass {
				continue
			}
			var err error
			switch x.Kind {
			case "dm-device":
				_, err = o.run(ctx, dmRemoveCmd(x.Name))
			case "loop-device":
				_, err = o.run(ctx, losetupDetachCmd(x.Name))
			case "grow-mount":
				err = cleanupGrowView(strings.TrimSuffix(x.Name, ".grow-view"))
			}
			if err != nil {
				errs = append(errs, err)
			}
			o.log().Warn("removed orphan storage object", "kind", x.Kind, "name", x.Name, "detail", x.Detail, "err", err)
		}
	}
	return errors.Join(errs...)
}
