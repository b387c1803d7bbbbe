package storage

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/banger-vm/banger/errdefs"
)

var (
	qemu        = Need{VMM: "qemu", QCOW2: true}
	firecracker = Need{VMM: "firecracker"}
	// everything is a host that offers every strategy.
	everything = Host{Reflink: true, ReflinkWhy: "xfs under /s clones files (FICLONE)", DM: true, DMWhy: "device-mapper present",
		QemuImg: true, QemuImgWhy: "qemu-img at /usr/bin/qemu-img", QCOW2Grow: true, QCOW2GrowWhy: "fuse"}
	// thisHost is what Probe finds on the build machine: ext4, no dm.
	thisHost = Host{ReflinkWhy: "ext4 under /s has no reflink (FICLONE: operation not supported)", DMWhy: "device-mapper is absent (/dev/mapper/control: no such file or directory)",
		QemuImg: true, QemuImgWhy: "qemu-img at /usr/bin/qemu-img", QCOW2Grow: true, QCOW2GrowWhy: "fuse"}
)

func TestChooseAuto(t *testing.T) {
	noReflink := everything
	noReflink.Reflink, noReflink.ReflinkWhy = false, thisHost.ReflinkWhy
	noQemuImg := thisHost
	noQemuImg.QemuImg, noQemuImg.QemuImgWhy = false, "qemu-img is not installed"
	noGrow := thisHost
	noGrow.QCOW2Grow, noGrow.QCOW2GrowWhy = false, "qemu-storage-daemon is not installed"
	grow := qemu
	grow.Grow = true
	for _, c := range []struct {
		name string
		need Need
		host Host
		want Kind
		why  []string
	}{
		{"reflink first for qemu", qemu, everything, KindReflink, []string{"auto: xfs"}},
		{"reflink first for firecracker", firecracker, everything, KindReflink, nil},
		{"qcow2 for qemu without reflink", qemu, noReflink, KindQCOW2, []string{"not reflink: ext4"}},
		{"dm for firecracker without reflink", firecracker, noReflink, KindDMSnapshot, []string{"qcow2: the firecracker driver cannot open a qcow2 disk"}},
		{"this host, qemu", qemu, thisHost, KindQCOW2, nil},
		{"this host, firecracker", firecracker, thisHost, KindSparseCopy, []string{"dm-snapshot: device-mapper is absent"}},
		{"no qemu-img", qemu, noQemuImg, KindSparseCopy, []string{"qcow2: qemu-img is not installed"}},
		{"qcow2 grow impossible", grow, noGrow, KindSparseCopy, []string{"qemu-storage-daemon"}},
		{"qcow2 grow possible", grow, thisHost, KindQCOW2, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, want := range []Kind{KindAuto, ""} {
				got, why, err := Choose(want, c.need, c.host)
				if err != nil || got != c.want {
					t.Fatalf("Choose(%q) = %q, %v; want %q", want, got, err, c.want)
				}
				for _, w := range c.why {
					if !strings.Contains(why, w) {
						t.Errorf("reason %q does not say %q", why, w)
					}
				}
			}
		})
	}
}

func TestChooseExplicit(t *testing.T) {
	for _, c := range []struct {
		name   string
		want   Kind
		need   Need
		host   Host
		refuse string // empty: accepted
	}{
		{"qcow2 with firecracker", KindQCOW2, firecracker, everything, "the firecracker driver cannot open a qcow2 disk"},
		{"reflink on ext4", KindReflink, qemu, thisHost, "ext4 under /s has no reflink"},
		{"dm without control", KindDMSnapshot, qemu, thisHost, "/dev/mapper/control"},
		{"qcow2 with qemu", KindQCOW2, qemu, thisHost, ""},
		{"dm with firecracker where present", KindDMSnapshot, firecracker, everything, ""},
		{"sparse-copy anywhere", KindSparseCopy, firecracker, Host{}, ""},
		{"sparse-copy over reflink", KindSparseCopy, qemu, everything, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, why, err := Choose(c.want, c.need, c.host)
			if c.refuse == "" {
				if err != nil || got != c.want || !strings.HasPrefix(why, "asked for: ") {
					t.Fatalf("Choose(%q) = %q, %q, %v", c.want, got, why, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Choose(%q) = %q: accepted, want refused", c.want, got)
			}
			if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), c.refuse) || !strings.Contains(err.Error(), string(c.want)) {
				t.Fatalf("refusal %q: want failed precondition naming %q and saying %q", err, c.want, c.refuse)
			}
		})
	}
	if _, _, err := Choose("zfs", qemu, everything); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), `"zfs"`) {
		t.Fatalf("unknown strategy: %v", err)
	}
}

func TestReportSaysWhyNot(t *testing.T) {
	r := Report(firecracker, thisHost)
	if len(r) != len(Kinds) {
		t.Fatalf("report lists %d strategies, want %d", len(r), len(Kinds))
	}
	got := map[Kind]Offer{}
	for _, o := range r {
		got[o.Kind] = o
		if o.Reason == "" {
			t.Errorf("%s: no reason", o.Kind)
		}
	}
	if got[KindReflink].OK || got[KindQCOW2].OK || got[KindDMSnapshot].OK || !got[KindSparseCopy].OK {
		t.Fatalf("report for firecracker on this host: %+v", r)
	}
}

func TestParseKind(t *testing.T) {
	for _, s := range []string{"auto", "qcow2", "reflink", "dm-snapshot", "sparse-copy"} {
		if k, err := ParseKind(s); err != nil || string(k) != s {
			t.Errorf("ParseKind(%q) = %q, %v", s, k, err)
		}
	}
	if k, err := ParseKind(""); err != nil || k != KindAuto {
		t.Errorf("empty: %q %v", k, err)
	}
	if _, err := ParseKind("dm"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("ParseKind(dm): %v", err)
	}
}

// TestProbeSaysWhatItFound probes the real filesystem under a temp dir
// (ext4 here); TestProbeFindsReflinkOnXFS probes a real XFS.
func TestProbeSaysWhatItFound(t *testing.T) {
	dir := t.TempDir()
	h := Probe(context.Background(), dir)
	if h.ReflinkWhy == "" || h.DMWhy == "" || h.QemuImgWhy == "" {
		t.Fatalf("probe without reasons: %+v", h)
	}
	if fs := fsName(dir); fs == "ext4" && (h.Reflink || !strings.Contains(h.ReflinkWhy, "ext4")) {
		t.Fatalf("ext4 probed as %v: %s", h.Reflink, h.ReflinkWhy)
	}
	if !h.DM && !strings.Contains(h.DMWhy, "/dev/mapper/control") {
		t.Fatalf("dm reason does not name the control node: %s", h.DMWhy)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("probe left %v", ents)
	}
}
