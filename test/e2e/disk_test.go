package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// diskFile is the name of a VM's root disk file under its strategy.
func diskFile(v api.VM) string {
	switch v.DiskStrategy {
	case "qcow2":
		return "rootfs.qcow2"
	case "dm-snapshot":
		return "rootfs.cow"
	}
	return "rootfs.ext4"
}

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// openModes returns the access mode (O_RDONLY, O_WRONLY, O_RDWR) of every
// descriptor process pid holds on path.
func openModes(t *testing.T, pid int, path string) []int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var modes []int
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err != nil || target != path {
			continue
		}
		info, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/fdinfo/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				modes = append(modes, int(flags)&unix.O_ACCMODE)
			}
		}
	}
	return modes
}

// TestDiskStrategies boots real guests from the test image under qcow2 and
// sparse-copy: a write (the guest's boot counter) survives stop and start;
// two VMs of one image do not see each other's writes; the VMM never opens
// the image writable; `vm show` names the strategy; and the image's bytes
// are the same after it all.
func TestDiskStrategies(t *testing.T) {
	requireE2E(t)
	d := startDaemon(t)
	d.importTestImage()
	var im api.Image
	mustJSON(t, d.must("image", "show", "default", "-o", "json"), &im)
	if fi, err := os.Stat(im.RootfsPath); err != nil || fi.Mode().Perm() != 0o444 {
		t.Fatalf("image root %s: %v %v, want mode 0444", im.RootfsPath, fi.Mode(), err)
	}
	before := fileSHA256(t, im.RootfsPath)

	strategies := []string{"sparse-copy"}
	if vmmKind() == "qemu" {
		strategies = append(strategies, "qcow2")
	}
	for _, s := range strategies {
		a, b := "a-"+s, "b-"+s
		v := d.createVM(a, "--disk-strategy", s)
		if v.DiskStrategy != s || !strings.HasPrefix(v.DiskReason, "asked for: ") {
			t.Fatalf("%s: created with %q (%q)", s, v.DiskStrategy, v.DiskReason)
		}
		if out := d.must("vm", "show", a); !strings.Contains(out, "Disk strategy:") || !strings.Contains(out, s+" (asked for: ") {
			t.Fatalf("%s: vm show does not name the strategy:\n%s", s, out)
		}
		if _, err := os.Stat(filepath.Join(v.VMDir, diskFile(v))); err != nil {
			t.Fatalf("%s: disk file: %v", s, err)
		}
		if _, stages := stageNames(d, a); stages["disk.create"] != "done" {
			t.Fatalf("%s: create journal %v", s, stages)
		}
		d.createVM(b, "--disk-strategy", s)

		d.must("vm", "start", a)
		d.waitLog(a, testimage.BootLine(1), 1, bootTimeout)
		pid := d.show(a).Runtime.PID
		modes := openModes(t, pid, im.RootfsPath)
		switch {
		case s == "qcow2" && len(modes) == 0:
			t.Fatalf("qcow2: qemu does not hold the image %s as its backing file", im.RootfsPath)
		case s != "qcow2" && len(modes) > 0:
			t.Fatalf("%s: the vmm opened the image itself", s)
		}
		for _, m := range modes {
			if m != unix.O_RDONLY {
				t.Fatalf("%s: the vmm holds the image open with access mode %d, not read-only", s, m)
			}
		}
		d.must("vm", "stop", a)
		d.waitLog(a, testimage.ShutdownMarker, 1, 10*time.Second)
		// The counter the first boot wrote is on the VM's disk.
		d.must("vm", "start", a)
		d.waitLog(a, testimage.BootLine(2), 1, bootTimeout)
		// The other VM of the same image starts from the image's content.
		d.must("vm", "start", b)
		d.waitLog(b, testimage.BootLine(1), 1, bootTimeout)
		if logs := d.must("vm", "logs", b); strings.Contains(logs, testimage.BootLine(2)) {
			t.Fatalf("%s: vm %s saw vm %s's writes", s, b, a)
		}
		d.must("vm", "delete", a)
		d.must("vm", "delete", b)
	}
	// A disk larger than the image (issue 11): through the daemon, a qcow2
	// VM gets a root filesystem of that size, and the guest boots on it.
	if vmmKind() == "qemu" {
		const size = 256 << 20
		g := d.createVM("grown", "--disk-strategy", "qcow2", "--disk-size", "256M")
		if g.DiskBytes != size {
			t.Fatalf("grown: disk %d bytes, want %d", g.DiskBytes, size)
		}
		if got := ext4Bytes(t, filepath.Join(g.VMDir, diskFile(g))); got != size {
			t.Fatalf("grown: the root filesystem holds %d bytes, want %d", got, size)
		}
		d.must("vm", "start", "grown")
		d.waitLog("grown", testimage.BootLine(1), 1, bootTimeout)
		d.must("vm", "delete", "grown")
	}
	if after := fileSHA256(t, im.RootfsPath); after != before {
		t.Fatalf("the image's root changed: sha256 %s, was %s", after, before)
	}
	d.must("image", "delete", "default")
}

// ext4Bytes is the size of the ext4 filesystem on a disk of any format
// qemu-img reads (its chain of backing files included): block count times
// block size, as dumpe2fs reads them from a raw copy.
func ext4Bytes(t *testing.T, disk string) int64 {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", disk, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	out, err := exec.Command("dumpe2fs", "-h", raw).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v\n%s", err, out)
	}
	var count, bs int64
	for _, l := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			count, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			bs, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return count * bs
}
