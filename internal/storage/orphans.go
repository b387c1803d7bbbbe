package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/model"
)

// Scope is where banger's disks and images live: only objects that point
// there are ever called orphans.
type Scope struct {
	VMsDir    string // one directory per VM id, holding its disk
	ImagesDir string // image roots, the origins of dm-snapshot loop devices
	CacheDir  string // Options.CacheDir: qcow2's grown image layers
}

// Orphan is a host object a backend made that no VM owns any more.
type Orphan struct {
	Kind string `json:"kind"` // "dm-device", "loop-device", "grow-mount" or "grown-layer"
	Name string `json:"name"` // dm name, /dev/loopN, mount point, or file
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
	for _, dir := range []string{s.VMsDir, s.CacheDir} {
		mounts, err := growMounts(dir)
		if err != nil {
			errs = append(errs, err)
		}
		for _, mp := range mounts {
			out = append(out, Orphan{Kind: "grow-mount", Name: mp})
		}
	}
	layers, err := staleLayers(s.CacheDir)
	if err != nil {
		errs = append(errs, err)
	}
	return append(out, layers...), errors.Join(errs...)
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

// staleLayers lists the grown layers in dir whose image is gone, and the
// temporary files of a grow a crash interrupted.
func staleLayers(dir string) ([]Orphan, error) {
	if dir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Orphan
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "grown-") || strings.HasSuffix(name, ".grow-view") || strings.HasSuffix(name, ".grow-pid") {
			continue
		}
		p := filepath.Join(dir, name)
		if strings.Contains(name, ".tmp-") {
			out = append(out, Orphan{Kind: "grown-layer", Name: p, Detail: "interrupted grow"})
			continue
		}
		image, err := layerImage(p)
		if err != nil {
			out = append(out, Orphan{Kind: "grown-layer", Name: p, Detail: err.Error()})
			continue
		}
		if _, err := os.Stat(image); errors.Is(err, os.ErrNotExist) {
			out = append(out, Orphan{Kind: "grown-layer", Name: p, Detail: "image " + image + " is gone"})
		}
	}
	return out, nil
}

// layerImage says which image a grown layer was made from: a qcow2
// layer's backing file, or a raw layer's user.banger.image xattr.
func layerImage(p string) (string, error) {
	if strings.HasSuffix(p, ".qcow2") {
		h, err := ReadQCOW2Header(p)
		return h.BackingFile, err
	}
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(p, layerImageXattr, buf)
	if err != nil {
		return "", fmt.Errorf("read %s of %q: %w", layerImageXattr, p, err)
	}
	return string(buf[:n]), nil
}

// RemoveImageLayers deletes the grown layers cached for image; the daemon
// calls it when it deletes the image (which it refuses while a VM uses it).
func RemoveImageLayers(o Options, image string) error {
	if o.CacheDir == "" {
		return nil
	}
	layers, err := filepath.Glob(filepath.Join(o.CacheDir, grownLayerPrefix(image)+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range layers {
		if got, err := layerImage(p); err == nil && got == image {
			errs = append(errs, cleanupGrowView(p), removeFile(p))
		}
	}
	return errors.Join(errs...)
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
		case x.Kind == "grow-mount":
			return 3
		}
		return 4
	}
	for pass := 0; pass < 5; pass++ {
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
			case "grown-layer":
				err = errors.Join(cleanupGrowView(x.Name), removeFile(x.Name))
			}
			if err != nil {
				errs = append(errs, err)
			}
			o.log().Warn("removed orphan storage object", "kind", x.Kind, "name", x.Name, "detail", x.Detail, "err", err)
		}
	}
	return errors.Join(errs...)
}
