package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/vmm"
)

// fakeDM plays losetup and dmsetup for the commands the dm-snapshot
// backend runs (device-mapper is absent here; its commands and tables are
// tested in internal/storage): it keeps the loop and dm devices they make.
type fakeDM struct {
	mu    sync.Mutex
	next  int
	loops map[string]string // /dev/loopN -> backing file
	dm    map[string]string // name -> table
}

func (f *fakeDM) run(_ context.Context, c storage.Cmd) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := c.Args
	switch {
	case c.Name == "losetup" && a[0] == "--find":
		dev := fmt.Sprintf("/dev/loop%d", f.next)
		f.next++
		f.loops[dev] = a[len(a)-1]
		return []byte(dev + "\n"), nil
	case c.Name == "losetup" && a[0] == "--detach":
		delete(f.loops, a[1])
		return nil, nil
	case c.Name == "losetup" && a[0] == "--list":
		type dev struct {
			Name     string `json:"name"`
			BackFile string `json:"back-file"`
		}
		var l struct {
			Devices []dev `json:"loopdevices"`
		}
		for n, b := range f.loops {
			l.Devices = append(l.Devices, dev{n, b})
		}
		return json.Marshal(l)
	case c.Name == "dmsetup" && a[0] == "info":
		var names []string
		for n := range f.dm {
			names = append(names, n)
		}
		return []byte(strings.Join(names, "\n")), nil
	case c.Name == "dmsetup" && a[0] == "create":
		f.dm[a[1]] = c.Stdin
		return nil, nil
	case c.Name == "dmsetup" && a[0] == "table":
		return []byte(strings.ReplaceAll(f.dm[a[1]], "/dev/loop", "7:")), nil
	case c.Name == "dmsetup" && a[0] == "remove":
		delete(f.dm, a[1])
		return nil, nil
	}
	return nil, fmt.Errorf("fakeDM: unexpected %s", c)
}

func (f *fakeDM) count() (loops, dm int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.loops), len(f.dm)
}

// TestDMSnapshotAttachedAtStartDetachedAtTeardown: a dm-snapshot VM's
// devices exist exactly while it runs: disk.attach sets them up and hands
// the VMM the snapshot device; the teardown (derived from the recorded
// runtime's dm name) and the delete remove them.
func TestDMSnapshotAttachedAtStartDetachedAtTeardown(t *testing.T) {
	e := newEnv(t)
	e.withHost(storage.Host{DM: true, DMWhy: "device-mapper present (test)"}, false)
	dm := &fakeDM{loops: map[string]string{}, dm: map[string]string{}}
	e.svc.cfg.DiskBackend = func(k storage.Kind, o storage.Options) (storage.Backend, error) {
		o.Run = dm.run
		return storage.New(k, o)
	}
	// The fake VMM stats its root disk, which is no real device here: its
	// launch fails once it has seen the spec, and the rollback must detach.
	boom := errors.New("launched")
	var launched vmm.Spec
	e.fake.OnLaunch = func(_ context.Context, s vmm.Spec) error {
		launched = s
		if loops, n := dm.count(); loops != 2 || n != 1 {
			t.Errorf("at launch: %d loops, %d dm devices, want 2 and 1", loops, n)
		}
		return boom
	}
	v, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, DiskStrategy: "dm-snapshot"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.StartVM(context.Background(), "web"); !errors.Is(err, boom) {
		t.Fatalf("start: %v", err)
	}
	snap := "/dev/mapper/fc-rootfs-" + v.Short()
	if launched.RootDisk != snap || launched.RootDiskFormat != "raw" {
		t.Fatalf("vmm given %s (%s), want %s (raw)", launched.RootDisk, launched.RootDiskFormat, snap)
	}
	if _, stages := e.lastOp("web"); !slices.Contains(stages, StepDiskAttach+":undone") {
		t.Fatalf("rollback %v did not detach the disk", stages)
	}
	if loops, n := dm.count(); loops != 0 || n != 0 {
		t.Fatalf("after the rollback: %d loops, %d dm devices left", loops, n)
	}

	// A VM recorded running with its devices (a daemon restart finds them):
	// the teardown releases them from the recorded dm name.
	v = e.get("web")
	b, err := e.svc.backendOf(v)
	if err != nil {
		t.Fatal(err)
	}
	img, err := e.st.ResolveImage(context.Background(), v.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Attach(context.Background(), e.svc.diskOf(v, img)); err != nil {
		t.Fatal(err)
	}
	v.Runtime.DMName = dmNameFor(v)
	if v.Runtime.DMName != "fc-rootfs-"+v.Short() {
		t.Fatalf("dm name %q", v.Runtime.DMName)
	}
	op := e.svc.newOperation("test", v)
	if err := e.svc.teardown(context.Background(), v, op, ""); err != nil {
		t.Fatal(err)
	}
	if loops, n := dm.count(); loops != 0 || n != 0 {
		t.Fatalf("after the teardown: %d loops, %d dm devices left", loops, n)
	}
	if err := e.svc.DeleteVM(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	if exists(v.VMDir) {
		t.Fatal("the vm dir (and its cow file) outlived the delete")
	}
}
