package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestDMTables(t *testing.T) {
	// The seed's table, exactly: 2 GiB disk over /dev/loop3, COW on /dev/loop4.
	if got, want := snapshotTable("/dev/loop3", "/dev/loop4", 4194304), "0 4194304 snapshot /dev/loop3 /dev/loop4 P 8\n"; got != want {
		t.Fatalf("snapshot table %q, want %q", got, want)
	}
	if got, want := originTable("/dev/loop3", 4194304, 8388608), "0 4194304 linear /dev/loop3 0\n4194304 4194304 zero\n"; got != want {
		t.Fatalf("origin table %q, want %q", got, want)
	}
	if got := dmSnapshotName("0123456789abcdef"); got != "fc-rootfs-01234567" {
		t.Fatalf("dm name %q", got)
	}
	if got := dmOriginName("0123456789abcdef"); got != "fc-origin-01234567" {
		t.Fatalf("origin name %q", got)
	}
}

func TestCOWBytesHoldsEveryChunk(t *testing.T) {
	for _, size := range []int64{4096, 1 << 20, 2 << 30, 16 << 30} {
		chunks := size / 4096
		// header + data chunks + one metadata chunk per 256 exceptions
		need := (1 + chunks + (chunks+255)/256) * 4096
		if got := cowBytes(size); got < need || got%4096 != 0 {
			t.Errorf("cowBytes(%d) = %d, need at least %d in 4 KiB chunks", size, got, need)
		}
	}
}

// fakeHost records commands and answers them like a host with
// device-mapper would. Only for checking the exact commands here.
type fakeHost struct {
	cmds    []string
	stdin   map[string]string
	dm      map[string]string // name -> table as dmsetup prints it
	nextLo  int
	failOn  string
	outputs map[string]string
}

func (f *fakeHost) run(_ context.Context, c Cmd) ([]byte, error) {
	s := c.String()
	f.cmds = append(f.cmds, s)
	if c.Stdin != "" {
		f.stdin[s] = c.Stdin
	}
	if f.failOn != "" && strings.HasPrefix(s, f.failOn) {
		return nil, errors.New("failed: " + s)
	}
	switch {
	case s == "dmsetup info -c --noheadings -o name":
		if len(f.dm) == 0 {
			return []byte("No devices found\n"), nil
		}
		var b strings.Builder
		for n := range f.dm {
			b.WriteString(n + "\n")
		}
		return []byte(b.String()), nil
	case strings.HasPrefix(s, "losetup --find --show"):
		f.nextLo++
		return []byte("/dev/loop" + string(rune('0'+f.nextLo+2)) + "\n"), nil
	case strings.HasPrefix(s, "dmsetup table "):
		return []byte(f.dm[c.Args[1]]), nil
	case strings.HasPrefix(s, "dmsetup remove "):
		delete(f.dm, c.Args[1])
	case strings.HasPrefix(s, "losetup --list"):
		return []byte(f.outputs["losetup --list"]), nil
	}
	return nil, nil
}

func newFake() *fakeHost {
	return &fakeHost{stdin: map[string]string{}, dm: map[string]string{}, outputs: map[string]string{}}
}

func dmDisk(t *testing.T, imageBytes, size int64) Disk {
	dir := t.TempDir()
	img := filepath.Join(dir, "root.ext4")
	if err := os.WriteFile(img, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, imageBytes); err != nil {
		t.Fatal(err)
	}
	cow := filepath.Join(dir, "root.cow")
	if err := os.WriteFile(cow, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return Disk{VMID: "0123456789abcdef", Image: img, Path: cow, Size: size}
}

func TestDMAttachCommands(t *testing.T) {
	f := newFake()
	m := &DMSnapshot{opts: Options{Run: f.run}}
	d := dmDisk(t, 2<<30, 2<<30)
	a, err := m.Attach(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	if a != (Attachment{Path: "/dev/mapper/fc-rootfs-01234567", Format: FormatRaw}) {
		t.Fatalf("attachment %+v", a)
	}
	want := []string{
		"dmsetup info -c --noheadings -o name",
		"losetup --find --show --read-only " + d.Image,
		"losetup --find --show " + d.Path,
		"dmsetup create fc-rootfs-01234567",
	}
	if !reflect.DeepEqual(f.cmds, want) {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(f.cmds, "\n"), strings.Join(want, "\n"))
	}
	if got := f.stdin["dmsetup create fc-rootfs-01234567"]; got != "0 4194304 snapshot /dev/loop3 /dev/loop4 P 8\n" {
		t.Fatalf("table %q", got)
	}
}

func TestDMAttachGrownCommands(t *testing.T) {
	f := newFake()
	m := &DMSnapshot{opts: Options{Run: f.run}}
	d := dmDisk(t, 1<<30, 4<<30)
	if _, err := m.Attach(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"dmsetup info -c --noheadings -o name",
		"losetup --find --show --read-only " + d.Image,
		"losetup --find --show " + d.Path,
		"dmsetup create fc-origin-01234567",
		"dmsetup create fc-rootfs-01234567",
	}
	if !reflect.DeepEqual(f.cmds, want) {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(f.cmds, "\n"), strings.Join(want, "\n"))
	}
	if got := f.stdin["dmsetup create fc-origin-01234567"]; got != "0 2097152 linear /dev/loop3 0\n2097152 6291456 zero\n" {
		t.Fatalf("origin table %q", got)
	}
	if got := f.stdin["dmsetup create fc-rootfs-01234567"]; got != "0 8388608 snapshot /dev/mapper/fc-origin-01234567 /dev/loop4 P 8\n" {
		t.Fatalf("snapshot table %q", got)
	}
}

func TestDMAttachFailureUndoes(t *testing.T) {
	f := newFake()
	f.failOn = "dmsetup create fc-rootfs-"
	m := &DMSnapshot{opts: Options{Run: f.run}}
	d := dmDisk(t, 1<<30, 4<<30)
	if _, err := m.Attach(context.Background(), d); err == nil {
		t.Fatal("attach succeeded")
	}
	want := []string{
		"dmsetup create fc-rootfs-01234567",
		"dmsetup remove fc-origin-01234567",
		"losetup --detach /dev/loop4",
		"losetup --detach /dev/loop3",
	}
	if got := f.cmds[len(f.cmds)-4:]; !reflect.DeepEqual(got, want) {
		t.Fatalf("undo:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDMAttachAfterRestartReuses(t *testing.T) {
	f := newFake()
	f.dm["fc-rootfs-01234567"] = "0 4194304 snapshot 7:3 7:4 P 8\n"
	m := &DMSnapshot{opts: Options{Run: f.run}}
	d := dmDisk(t, 2<<30, 2<<30)
	a, err := m.Attach(context.Background(), d)
	if err != nil || a.Path != "/dev/mapper/fc-rootfs-01234567" {
		t.Fatalf("%+v %v", a, err)
	}
	if len(f.cmds) != 1 {
		t.Fatalf("re-attach ran %v, want only the listing", f.cmds)
	}
}

func TestDMDetachCommands(t *testing.T) {
	f := newFake()
	// As dmsetup prints tables: devices as major:minor.
	f.dm["fc-rootfs-01234567"] = "0 8388608 snapshot 253:1 7:4 P 8\n"
	f.dm["fc-origin-01234567"] = "0 2097152 linear 7:3 0\n2097152 6291456 zero \n"
	f.dm["fc-rootfs-other000"] = "0 8 snapshot 7:9 7:10 P 8\n"
	d := dmDisk(t, 1<<30, 4<<30)
	f.outputs["losetup --list"] = `{"loopdevices": [{"name": "/dev/loop3", "back-file": "` + d.Image + `"}, {"name": "/dev/loop4", "back-file": "` + d.Path + `"}, {"name": "/dev/loop7", "back-file": "` + d.Path + ` (deleted)"}]}`
	m := &DMSnapshot{opts: Options{Run: f.run}}
	if err := m.Detach(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"dmsetup info -c --noheadings -o name",
		"dmsetup table fc-rootfs-01234567",
		"dmsetup remove fc-rootfs-01234567",
		"dmsetup table fc-origin-01234567",
		"dmsetup remove fc-origin-01234567",
		"losetup --list --json --output NAME,BACK-FILE",
		"losetup --detach /dev/loop4",
		"losetup --detach /dev/loop3",
		"losetup --detach /dev/loop7",
	}
	if !reflect.DeepEqual(f.cmds, want) {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(f.cmds, "\n"), strings.Join(want, "\n"))
	}
	if _, ok := f.dm["fc-rootfs-other000"]; !ok {
		t.Fatal("detach removed another VM's device")
	}
}

func TestDMCloneSuspendsAttached(t *testing.T) {
	f := newFake()
	f.dm["fc-rootfs-01234567"] = "0 8 snapshot 7:3 7:4 P 8\n"
	m := &DMSnapshot{opts: Options{Run: f.run}}
	d := dmDisk(t, 1<<20, 1<<20)
	if err := os.WriteFile(d.Path, []byte("exceptions"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "clone.cow")
	if err := m.Clone(context.Background(), d, dst); err != nil {
		t.Fatal(err)
	}
	want := []string{"dmsetup info -c --noheadings -o name", "dmsetup suspend fc-rootfs-01234567", "dmsetup resume fc-rootfs-01234567"}
	if !reflect.DeepEqual(f.cmds, want) {
		t.Fatalf("commands %q", f.cmds)
	}
	if b, _ := os.ReadFile(dst); string(b) != "exceptions" {
		t.Fatalf("clone holds %q", b)
	}
}

func TestDMCreateMakesSparseCOW(t *testing.T) {
	f := newFake()
	m := &DMSnapshot{opts: Options{Run: f.run}}
	d := dmDisk(t, 1<<30, 1<<30)
	if err := os.Remove(d.Path); err != nil {
		t.Fatal(err)
	}
	if err := m.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(d.Path)
	if err != nil || fi.Size() != cowBytes(d.Size) || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cow file %v %v", fi, err)
	}
	if len(f.cmds) != 0 {
		t.Fatalf("create of an ungrown disk ran %q: devices belong to start", f.cmds)
	}
	if err := m.Create(context.Background(), d); err == nil {
		t.Fatal("create over an existing cow file succeeded")
	}
	odd := dmDisk(t, 1<<20, 1<<20+100)
	if err := os.Remove(odd.Path); err != nil {
		t.Fatal(err)
	}
	if err := m.Create(context.Background(), odd); err == nil {
		t.Fatal("a disk size that is not a multiple of 512 was accepted")
	}
}

func TestParseLoopsAndNames(t *testing.T) {
	l, err := parseLoops([]byte(`{"loopdevices": [{"name": "/dev/loop0", "back-file": "/a b/c (deleted)"}]}`))
	if err != nil || l["/dev/loop0"] != "/a b/c" {
		t.Fatalf("%v %v", l, err)
	}
	if l, err := parseLoops(nil); err != nil || len(l) != 0 {
		t.Fatalf("%v %v", l, err)
	}
	if n := parseDMNames("No devices found\n"); len(n) != 0 {
		t.Fatalf("%v", n)
	}
	if got := tableDevices("0 8 snapshot 7:3 253:0 P 8\n"); !reflect.DeepEqual(got, []string{"/dev/loop3"}) {
		t.Fatalf("%v", got)
	}
}
