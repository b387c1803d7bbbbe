package identity

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/testutil/testimage"
)

// guestRC replaces the test image's rcS: it reports what the guest sees of
// its disks, tries to write the config disk, then powers off cleanly.
const guestRC = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
[ -e /proc/mounts ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
for d in /sys/class/block/vd?; do echo "DISK ${d##*/} ro=$(cat $d/ro)" >/dev/console; done
if [ -b /dev/vdb ]; then
	if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=notrunc 2>/dev/null; then
		echo "WRITE vdb ok" >/dev/console
	else
		echo "WRITE vdb refused" >/dev/console
	fi
fi
echo "GUEST-UP hostname=$(cat /etc/hostname)" >/dev/console
sync
mount -o remount,ro /
poweroff -f
`

// bootImage makes a bootable ext4 root from the test image with a banger
// user (uid 1000, gid 1001, no home yet), baked host keys, resolv.conf as a
// symlink and guestRC as its rcS; mutate may change the tree first.
func bootImage(t *testing.T, ctx context.Context, img testimage.Image, mutate func(root string)) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "debugfs", "-R", "rdump / "+root, img.Rootfs).CombinedOutput(); err != nil {
		t.Fatalf("debugfs rdump: %v %s", err, out)
	}
	for p, data := range map[string]string{
		"etc/passwd":                   "root:x:0:0:root:/root:/bin/sh\nbanger:x:1000:1001::/home/banger:/bin/sh\n",
		"etc/group":                    "root:x:0:\nbanger:x:1001:\n",
		"etc/hosts":                    "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/ssh/ssh_host_rsa_key":     "baked\n",
		"etc/ssh/ssh_host_ecdsa_key":   "baked\n",
		"etc/init.d/rcS":               guestRC,
		"home/.keep":                   "",
		"run/systemd/resolve/stub.txt": "nameserver 127.0.0.53\n",
	} {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(root, "etc/resolv.conf")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Symlink("../run/systemd/resolve/stub.txt", filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(root)
	}
	return mkImage(t, root)
}

// overlay makes a qcow2 overlay over base, the copy-on-write disk a VM gets.
func overlay(t *testing.T, base string) string {
	t.Helper()
	ov := filepath.Join(t.TempDir(), "root.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, ov).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	return ov
}

// flatten returns the overlay's content as a raw disk, for debugfs.
func flatten(t *testing.T, ov string) string {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "flat.ext4")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", ov, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, out)
	}
	return raw
}

// boot runs the guest under QEMU TCG with root (qcow2) and, if cfg is not
// empty, the config disk read-only, until it powers off; it returns the
// serial console. With firecrackerLike the config disk comes first (it is
// vda, the root vdb) and has no serial, as a Firecracker drive: the
// initramfs must find it by its magic alone.
func boot(t *testing.T, ctx context.Context, img testimage.Image, root, cfg string, firecrackerLike bool) string {
	t.Helper()
	console := filepath.Join(t.TempDir(), "console.log")
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + console,
		"-kernel", img.Kernel, "-initrd", img.Initrd,
	}
	rootArgs := []string{
		"-drive", "file=" + root + ",if=none,id=root,format=qcow2",
		"-device", "virtio-blk-pci,drive=root",
	}
	cmdline := "console=ttyS0 root=/dev/vda rw panic=1"
	switch {
	case cfg == "":
		args = append(args, rootArgs...)
	case firecrackerLike:
		cmdline = "console=ttyS0 root=/dev/vdb rw panic=1 banger.config=1"
		args = append(args,
			"-drive", "file="+cfg+",if=none,id=cfg,format=raw,readonly=on",
			"-device", "virtio-blk-pci,drive=cfg")
		args = append(args, rootArgs...)
	default:
		cmdline += " banger.config=1"
		args = append(args, rootArgs...)
		args = append(args,
			"-drive", "file="+cfg+",if=none,id=cfg,format=raw,readonly=on",
			"-device", "virtio-blk-pci,drive=cfg,serial="+ConfigDiskSerial)
	}
	args = append(args, "-append", cmdline)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput()
	con, _ := os.ReadFile(console)
	if err != nil {
		t.Fatalf("qemu: %v %s\nconsole:\n%s", err, out, con)
	}
	return string(con)
}

// rawConfigDisk frames entries as a config disk without ConfigDisk's checks:
// what a bug or an attacker could hand the initramfs.
func rawConfigDisk(t *testing.T, entries []*cpio.Header, bodies []string) string {
	t.Helper()
	var buf bytes.Buffer
	buf.WriteString(ConfigDiskMagic)
	buf.Write(make([]byte, ConfigDiskHeaderSize-len(ConfigDiskMagic)))
	w := cpio.NewWriter(&buf)
	for i, h := range entries {
		h.Inode = int64(i + 1)
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(bodies[i])); err != nil && h.Mode&cpio.ModeType == cpio.TypeReg {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	buf.Write(make([]byte, ConfigDiskHeaderSize-buf.Len()%ConfigDiskHeaderSize))
	p := filepath.Join(t.TempDir(), "config.img")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDiskBoot(t *testing.T) {
	testutil.RequireVMs(t)
	testutil.RequireTools(t, "qemu-img", "debugfs", "e2fsck")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	img, err := testimage.Build(ctx, testimage.DefaultCacheDir)
	if err != nil {
		t.Fatal(err)
	}
	base := bootImage(t, ctx, img, nil)
	baseSum := fileSum(t, base)

	t.Run("identity lands on a qcow2 overlay before init", func(t *testing.T) {
		id := testIdentity(t, "web")
		facts, err := ReadImage(ctx, base, t.TempDir(), id.User)
		if err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(t.TempDir(), "config.img")
		if err := WriteConfigDisk(cfg, id, facts); err != nil {
			t.Fatal(err)
		}
		cfgSum := fileSum(t, cfg)
		ov := overlay(t, base)
		con := boot(t, ctx, img, ov, cfg, false)
		for _, want := range []string{
			"initramfs: identity applied",
			"GUEST-UP hostname=web", // /sbin/init already sees the identity
			"DISK vdb ro=1",
			"WRITE vdb refused",
		} {
			if !strings.Contains(con, want) {
				t.Errorf("console lacks %q:\n%s", want, con)
			}
		}
		if fileSum(t, cfg) != cfgSum {
			t.Error("the guest changed its config disk")
		}
		if fileSum(t, base) != baseSum {
			t.Error("the base image changed: the identity did not go to the overlay")
		}
		flat := flatten(t, ov)
		// Every file with its content, mode and owner; baked host keys gone.
		checkApplied(t, flat, id, "/home/banger")
		if got := statImage(t, flat, "/home/banger"); got != "directory 0700 1000:1001" {
			t.Errorf("/home/banger: %q", got)
		}
		if got := statImage(t, flat, "/home"); got != "directory 0755 0:0" {
			t.Errorf("/home: %q", got)
		}
	})

	t.Run("found by its magic alone as a Firecracker drive", func(t *testing.T) {
		id := testIdentity(t, "fc")
		facts, err := ReadImage(ctx, base, t.TempDir(), id.User)
		if err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(t.TempDir(), "config.img")
		if err := WriteConfigDisk(cfg, id, facts); err != nil {
			t.Fatal(err)
		}
		ov := overlay(t, base)
		con := boot(t, ctx, img, ov, cfg, true)
		if !strings.Contains(con, "config disk /dev/vda") || !strings.Contains(con, "GUEST-UP hostname=fc") {
			t.Errorf("console:\n%s", con)
		}
		checkApplied(t, flatten(t, ov), id, "/home/banger")
	})

	t.Run("no config disk applies nothing", func(t *testing.T) {
		ov := overlay(t, base)
		con := boot(t, ctx, img, ov, "", false)
		if !strings.Contains(con, "GUEST-UP hostname=banger-test") || strings.Contains(con, "identity applied") {
			t.Errorf("console:\n%s", con)
		}
		if got := catImage(t, flatten(t, ov), "/etc/ssh/ssh_host_rsa_key"); got != "baked\n" {
			t.Errorf("the image's host key changed: %q", got)
		}
	})

	reg := func(name string, mode cpio.FileMode) *cpio.Header {
		return &cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Links: 1, Size: int64(len("pwned\n"))}
	}
	for name, tc := range map[string]struct {
		entries []*cpio.Header
		bodies  []string
	}{
		"path traversal": {
			[]*cpio.Header{reg("etc/hostname", 0o644), reg("etc/ssh/../../var/pwned", 0o644)},
			[]string{"pwned\n", "pwned\n"},
		},
		"path outside the allow-list": {
			[]*cpio.Header{reg("etc/hostname", 0o644), reg("var/pwned", 0o644)},
			[]string{"pwned\n", "pwned\n"},
		},
		"symlink entry": {
			[]*cpio.Header{
				{Name: "etc/ssh", Mode: cpio.TypeSymlink | 0o777, Links: 1, Linkname: "/newroot/var", Size: int64(len("/newroot/var"))},
				reg("etc/ssh/ssh_host_x_key", 0o600),
			},
			[]string{"/newroot/var", "pwned\n"},
		},
	} {
		t.Run("refuses a hostile archive: "+name, func(t *testing.T) {
			ov := overlay(t, base)
			con := boot(t, ctx, img, ov, rawConfigDisk(t, tc.entries, tc.bodies), false)
			if !strings.Contains(con, "config disk") || !strings.Contains(con, "refused") || strings.Contains(con, "GUEST-UP") {
				t.Errorf("want a refusal and no boot; console:\n%s", con)
			}
			flat := flatten(t, ov)
			if got := catImage(t, flat, "/etc/hostname"); got != "banger-test\n" {
				t.Errorf("/etc/hostname changed to %q: the archive was partly applied", got)
			}
			for _, p := range []string{"/var/pwned", "/var/ssh_host_x_key", "/pwned"} {
				if statImage(t, flat, p) != "" {
					t.Errorf("%s was written", p)
				}
			}
		})
	}

	t.Run("refuses to write through a symlink in the image", func(t *testing.T) {
		evil := bootImage(t, ctx, img, func(root string) {
			if err := os.RemoveAll(filepath.Join(root, "etc/ssh")); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(root, "var/evil"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("../var/evil", filepath.Join(root, "etc/ssh")); err != nil {
				t.Fatal(err)
			}
		})
		id := testIdentity(t, "web")
		facts, err := ReadImage(ctx, evil, t.TempDir(), id.User)
		if err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(t.TempDir(), "config.img")
		if err := WriteConfigDisk(cfg, id, facts); err != nil {
			t.Fatal(err)
		}
		ov := overlay(t, evil)
		con := boot(t, ctx, img, ov, cfg, false)
		if !strings.Contains(con, "refused") || strings.Contains(con, "GUEST-UP") {
			t.Errorf("want a refusal and no boot; console:\n%s", con)
		}
		if ls := debugfsR(t, flatten(t, ov), "ls /var/evil"); strings.Contains(ls, "ssh_host") {
			t.Errorf("host keys written through the symlink: %s", ls)
		}
	})
}
