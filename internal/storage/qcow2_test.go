package storage

import (
	"context"
	"encoding/json"
	"errors"
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
	os.WriteFile(img, make([]byte, 4096), 0o444)
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

// TestQCOW2Header makes a real overlay and reads its backing file and
// format from the file's bytes, checked against qemu-img info.
func TestQCOW2Header(t *testing.T) {
	testutil.RequireTools(t, "qemu-img")
	dir := t.TempDir()
	img := filepath.Join(dir, "root.ext4")
	if err := os.WriteFile(img, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 1<<30)
	d := Disk{VMID: "v1", Image: img, Path: filepath.Join(dir, "root.qcow2"), Size: 1 << 30}
	q := &QCOW2{}
	if err := q.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	h, err := ReadQCOW2Header(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if h.BackingFile != img || h.BackingFormat != "raw" || h.Size != 1<<30 || h.Version != 3 {
		t.Fatalf("header %+v", h)
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", d.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Format        string `json:"format"`
		VirtualSize   int64  `json:"virtual-size"`
		BackingFile   string `json:"backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.BackingFile != h.BackingFile || info.BackingFormat != h.BackingFormat || info.VirtualSize != int64(h.Size) {
		t.Fatalf("qemu-img info %+v disagrees with the header %+v", info, h)
	}
	var st syscall.Stat_t
	syscall.Stat(d.Path, &st)
	if st.Blocks*512 > 1<<20 {
		t.Fatalf("a fresh overlay of a 1 GiB image uses %d bytes", st.Blocks*512)
	}
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
