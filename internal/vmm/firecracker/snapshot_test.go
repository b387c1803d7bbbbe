package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/firecracker/fctest"
)

// TestSnapshotRestore drives pause, snapshot and restore through the API
// double, unjailed and jailed: a running VM is not saved; a paused one is,
// into 0600 files owned by the daemon's user; a new Firecracker restores
// them (PUT /snapshot/load as the first configuration after the logger,
// with the spec's tap and vsock socket, then PATCH /vm Resumed as Boot) on
// another disk; a snapshot of another shape is refused before anything
// starts. Every request passes the API specification; the requests are
// the golden transcript.
func TestSnapshotRestore(t *testing.T) {
	for _, mode := range []JailerMode{JailerOff, JailerOn} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, opts{jailer: mode})
			c := ctx(t)
			proc, err := h.drv.Launch(c, h.spec)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.drv.Boot(c, h.spec); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(h.dir, "snap")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if _, err := h.drv.SaveSnapshot(c, h.spec, dir); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "not paused") {
				t.Fatalf("SaveSnapshot of a running vm: err = %v, want failed precondition", err)
			}
			assertEmpty(t, dir)
			if err := h.drv.Pause(c, h.spec); err != nil {
				t.Fatal(err)
			}
			meta, err := h.drv.SaveSnapshot(c, h.spec, dir)
			if err != nil {
				t.Fatal(err)
			}
			if meta.Driver != vmm.KindFirecracker || meta.VCPUs != 2 || meta.MemoryMiB != 256 || !meta.Network || !meta.Vsock ||
				meta.SizeBytes != int64(len(fctest.SnapshotStateContent)+len(fctest.SnapshotMemoryContent)) {
				t.Fatalf("meta = %+v", meta)
			}
			for name, want := range map[string][]byte{StateFile: fctest.SnapshotStateContent, MemoryFile: fctest.SnapshotMemoryContent} {
				p := filepath.Join(dir, name)
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s: %q %v", name, got, err)
				}
				fi, _ := os.Stat(p)
				if fi.Mode().Perm() != 0o600 || !ownedByMe(fi) {
					t.Errorf("%s: mode %v, not the daemon's private file", name, fi.Mode())
				}
			}
			if _, err := h.drv.SaveSnapshot(c, h.spec, dir); !errors.Is(err, errdefs.ErrAlreadyExists) {
				t.Fatalf("second SaveSnapshot into %s: err = %v, want already exists", dir, err)
			}
			if err := h.drv.Resume(c, h.spec); err != nil {
				t.Fatal(err)
			}
			stop(t, h, h.spec, proc)

			// Restore on a copy of the disk, with another tap.
			restore := h.spec
			restore.RootDisk = filepath.Join(h.dir, "vm", "clone.ext4")
			writeFile(t, restore.RootDisk, []byte("rootfs contents"), 0o600)
			restore.Tap = "tap-fc-restored"
			restore.Restore = &vmm.RestoreSpec{Dir: dir}

			execs := len(h.execs())
			wrong := restore
			wrong.VCPUs = 1
			if _, err := h.drv.Launch(c, wrong); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "this vm has 1 vcpu/256 MiB on firecracker") {
				t.Fatalf("restore with 1 vcpu: err = %v, want failed precondition naming the shapes", err)
			}
			if n := len(h.execs()); n != execs {
				t.Fatalf("the refused restore started %d processes", n-execs)
			}
			before := len(h.requests())
			rproc, err := h.drv.Launch(c, restore)
			if err != nil {
				t.Fatal(err)
			}
			reqs := h.requests()[before:]
			load := reqs[2]
			if load.Path != "/snapshot/load" || reqs[1].Path != "/logger" {
				t.Fatalf("restore requests: %+v", reqs)
			}
			var body snapshotLoad
			if err := json.Unmarshal(load.Body, &body); err != nil {
				t.Fatal(err)
			}
			if body.ResumeVM || len(body.NetworkOverrides) != 1 || body.NetworkOverrides[0].HostDevName != restore.Tap || body.VsockOverride == nil {
				t.Fatalf("load body: %s", load.Body)
			}
			if err := h.drv.Boot(c, restore); err != nil {
				t.Fatal(err)
			}
			if last := h.requests()[len(h.requests())-1]; last.Method != "PATCH" || last.Path != "/vm" || !strings.Contains(string(last.Body), "Resumed") {
				t.Fatalf("Boot of a restored vm sent %s %s %s", last.Method, last.Path, last.Body)
			}
			h.assertSpecClean()
			h.golden("snapshot-" + string(mode))
			stop(t, h, restore, rproc)
			if mode == JailerOn {
				if _, err := os.Stat(h.jailDir()); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("jail left after Cleanup: %v", err)
				}
			}
		})
	}
}

func stop(t *testing.T, h *harness, spec vmm.Spec, p vmm.Process) {
	t.Helper()
	c := ctx(t)
	if err := h.drv.Shutdown(c, spec); err != nil {
		t.Fatal(err)
	}
	if !system.WaitExit(c, p.PID, p.StartTime, 5*time.Second) {
		t.Fatal("the VM did not power off after Ctrl-Alt-Del")
	}
	if err := h.drv.Cleanup(c, spec); err != nil {
		t.Fatal(err)
	}
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		t.Errorf("%s left in %s", e.Name(), dir)
	}
}

func ownedByMe(fi os.FileInfo) bool {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid) == os.Geteuid() && int(st.Gid) == os.Getegid()
}
