package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
)

func TestQCOW2Commands(t *testing.T) {
	got := qcow2CreateCmd("/s/images/i1/rootfs.ext4", "/s/vms/v1/root.qcow2", 4<<30)
	want := Cmd{Name: "qemu-img", Args: []string{"create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/s/images/i1/rootfs.ext4", "/s/vms/v1/root.qcow2", "4294967296"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("create command %q, want %q", got, want)
	}
	got = growViewCmd("/s/vms/a,b/root.qcow2", "/s/vms/a,b/root.qcow2.grow-view", "/s/vms/a,b/root.qcow2.grow-pid")
	want = Cmd{Name: "qemu-storage-daemon", Args: []string{
		"--blockdev", "driver=file,node-name=file0,filename=/s/vms/a,,b/root.qcow2",
		"--blockdev", "driver=qcow2,node-name=disk0,file=file0",
		"--export", "type=fuse,id=grow0,node-name=disk0,mountpoint=/s/vms/a,,b/root.qcow2.grow-view,writable=on",
		"--pidfile", "/s/vms/a,b/root.qcow2.grow-pid",
		"--daemonize",
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("grow command %q, want %q", got, want)
	}
}

func TestQCOW2RefusesRelativeImage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "root.ext4")
	if err := os.WriteFile(img, make([]byte, 4096), 0o444); err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	rel, _ := filepath.Rel(wd, img)
	q := &QCOW2{opts: Options{Run: func(context.Context, Cmd) ([]byte, error) { t.Fatal("ran a command"); return nil, nil }}}
	d := Disk{VMID: "v", Image: rel, Path: filepath.Join(dir, "vm.qcow2"), Size: 4096}
	if err := q.Create(context.Background(), d); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("relative image: %v", err)
	}
	if _, err := os.Stat(d.Path); !os.IsNotExist(err) {
		t.Fatal("refused create left a file")
	}
}

type qemuInfo struct {
	Format        string `json:"format"`
	VirtualSize   int64  `json:"virtual-size"`
	ClusterSize   int64  `json:"cluster-size"`
	BackingFile   string `json:"backing-filename"`
	BackingFormat string `json:"backing-filename-format"`
	Specific      struct {
		Data struct {
			Compat        string `json:"compat"`
			RefcountBits  int    `json:"refcount-bits"`
			Corrupt       bool   `json:"corrupt"`
			LazyRefcounts bool   `json:"lazy-refcounts"`
		} `json:"data"`
	} `json:"format-specific"`
}

func info(t *testing.T, p string) qemuInfo {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", p).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", p, err)
	}
	var i qemuInfo
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatal(err)
	}
	return i
}

func check(t *testing.T, p string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "check", p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", p, err, out)
	}
}

// TestQCOW2Header makes real overlays (banger's writer, for several
// sizes), reads the backing file and format back from the file's bytes,
// and checks them with qemu-img info and check against an overlay made by
// qemu-img create, before and after writes across L2 tables.
func TestQCOW2Header(t *testing.T) {
	testutil.RequireTools(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "root.ext4")
	if err := os.WriteFile(img, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<30); err != nil {
		t.Fatal(err)
	}
	q := &QCOW2{}
	for i, size := range []int64{1 << 30, 3<<30 + 512, 16 << 30, 600 << 30} {
		d := Disk{VMID: "v1", Image: img, Path: filepath.Join(dir, fmt.Sprintf("root%d.qcow2", i)), Size: size}
		if size > 1<<30 {
			// Only the header is under test here: no filesystem to grow.
			f, err := os.OpenFile(d.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if err := writeQCOW2Overlay(f, img, FormatRaw, size); err != nil {
				t.Fatal(err)
			}
			f.Close()
		} else if err := q.Create(context.Background(), d); err != nil {
			t.Fatal(err)
		}
		h, err := ReadQCOW2Header(d.Path)
		if err != nil {
			t.Fatal(err)
		}
		if h.BackingFile != img || h.BackingFormat != "raw" || h.Size != uint64(size) || h.Version != 3 {
			t.Fatalf("header %+v", h)
		}
		ref := d.Path + ".ref"
		if _, err := ExecRunner(context.Background(), qcow2CreateCmd(img, ref, size)); err != nil {
			t.Fatal(err)
		}
		got, want := info(t, d.Path), info(t, ref)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("qemu-img info of banger's overlay:\n%+v\nof qemu-img's:\n%+v", got, want)
		}
		if got.BackingFile != h.BackingFile || got.BackingFormat != h.BackingFormat || got.VirtualSize != int64(h.Size) {
			t.Fatalf("qemu-img info %+v disagrees with the header %+v", got, h)
		}
		check(t, d.Path)
		var st syscall.Stat_t
		if err := syscall.Stat(d.Path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks*512 > 512<<10 {
			t.Fatalf("a fresh overlay of %d bytes uses %d bytes", size, st.Blocks*512)
		}
		// Writes at the start, across the first L2 boundary, and at the end.
		for _, off := range []int64{0, 512<<20 - 4096, size - 65536} {
			if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0xab %d 8192", max(0, min(off, size-8192))), d.Path).CombinedOutput(); err != nil {
				t.Fatalf("qemu-io write at %d: %v %s", off, err, out)
			}
		}
		check(t, d.Path)
	}
	d := Disk{VMID: "v1", Image: img, Path: filepath.Join(dir, "root0.qcow2"), Size: 1 << 30}
	a, err := q.Attach(context.Background(), d)
	if err != nil || a != (Attachment{Path: d.Path, Format: FormatQCOW2}) {
		t.Fatalf("attach %+v %v", a, err)
	}
	other := d
	other.Image = filepath.Join(dir, "other.ext4")
	if _, err := q.Attach(context.Background(), other); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("attach over another image: %v", err)
	}
	if _, err := ReadQCOW2Header(img); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("raw file read as qcow2: %v", err)
	}
}
