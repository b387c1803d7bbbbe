package testimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// inittab: busybox init runs rcS once, then waits. It turns off the kernel's
// immediate Ctrl-Alt-Del reboot at start, so the kernel sends it SIGINT
// instead, on which it runs the ctrlaltdel action.
const inittab = `::sysinit:/etc/init.d/rcS
::ctrlaltdel:/etc/init.d/ctrlaltdel
::shutdown:/bin/sync
`

// rcS counts boots on the root disk, syncs, then prints the boot line.
const rcS = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
# The initramfs moved these mounts here; mount them if booted without it.
[ -e /proc/mounts ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
mount -o remount,rw /
hostname banger-test
n=$(cat ` + BootCountPath + ` 2>/dev/null)
case "$n" in '' | *[!0-9]*) n=0 ;; esac
n=$((n + 1))
echo "$n" >` + BootCountPath + `.new && mv ` + BootCountPath + `.new ` + BootCountPath + `
sync
echo "` + BootMarker + ` count=$n" >/dev/console
`

// ctrlaltdel is the graceful stop: marker, sync, read-only root, power off.
// QEMU runs with -no-reboot, so reboot -f (the fallback) also ends it.
const ctrlaltdel = `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
echo "` + ShutdownMarker + `" >/dev/console
sync
mount -o remount,ro / || echo "remount / read-only failed" >/dev/console
poweroff -f
reboot -f
`

// ensureRootfs builds the root disk: a static busybox with every applet
// linked, busybox init and the scripts above, in a RootfsSize ext4 image.
func ensureRootfs(ctx context.Context, cacheDir, busybox, bbSum string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "rootfs v1\n%d\n%s\n%s\n%s\n%s\n", RootfsSize, bbSum, inittab, rcS, ctrlaltdel)
	final := filepath.Join(cacheDir, "rootfs-"+hex.EncodeToString(h.Sum(nil))[:12]+".ext4")
	if exists(final) {
		return final, nil
	}
	tmp, err := os.MkdirTemp(cacheDir, tmpPrefix+"rootfs-")
	if err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	defer os.RemoveAll(tmp)
	tree := filepath.Join(tmp, "tree")
	if err := populateRootfs(ctx, tree, busybox); err != nil {
		return "", fmt.Errorf("testimage: rootfs tree: %w", err)
	}
	img := filepath.Join(tmp, "rootfs.ext4")
	if _, err := run(ctx, tmp, "mkfs.ext4", "-q", "-F", "-L", "banger-test", "-d", tree,
		"-E", "root_owner=0:0", img, strconv.Itoa(RootfsSize>>10)+"k"); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	f, err := os.Open(img)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	if err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	if err := os.Rename(img, final); err != nil {
		return "", fmt.Errorf("testimage: %w", err)
	}
	return final, nil
}

func populateRootfs(ctx context.Context, tree, busybox string) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "dev", "proc", "sys", "tmp", "run", "root", "var"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(tree, "tmp"), 0o1777); err != nil {
		return err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tree, "bin/busybox"), bb, 0o755); err != nil {
		return err
	}
	list, err := run(ctx, "", busybox, "--list-full")
	if err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(list)) {
		applet = filepath.Clean(applet)
		if filepath.IsAbs(applet) || strings.HasPrefix(applet, "..") || applet == "bin/busybox" {
			continue
		}
		dst := filepath.Join(tree, applet)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return err
		}
	}
	for name, content := range map[string]string{
		"etc/inittab":           inittab,
		"etc/init.d/rcS":        rcS,
		"etc/init.d/ctrlaltdel": ctrlaltdel,
		"etc/hostname":          "banger-test\n",
		"etc/passwd":            "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":             "root:x:0:\n",
	} {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "etc/init.d/") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(tree, name), []byte(content), mode); err != nil {
			return err
		}
	}
	return nil
}
