#!/bin/sh
# banger initramfs /init: load the modules listed in /etc/initramfs-modules,
# mount the root disk named by root= and switch_root into it.
# Kernel command line: root= (default /dev/vda, UUID=/LABEL= also work),
# rootfstype= (default ext4), rootflags= (extra mount options),
# init= (default /sbin/init), rootwait= (seconds to wait for root, default 10).
export PATH=/bin

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
# The kernel opened /dev/console from its built-in initramfs; reopen it from
# devtmpfs in case it could not.
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

msg() { echo "initramfs: $*"; }

# fail never returns: it reports, then powers the machine off. If poweroff
# itself fails, init exits and the kernel panics (panic= decides the rest).
fail() {
	msg "FATAL: $*"
	msg "powering off"
	sync
	poweroff -f
	sleep 5
	exit 1
}

root=/dev/vda
rootfstype=ext4
rootflags=
init=/sbin/init
rootwait=10
set -f
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) root="${arg#root=}" ;;
	rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
	rootflags=*) rootflags="${arg#rootflags=}" ;;
	init=*) init="${arg#init=}" ;;
	rootwait=*) rootwait="${arg#rootwait=}" ;;
	esac
done
set +f
case "$rootwait" in '' | *[!0-9]*) rootwait=10 ;; esac

if [ -f /etc/initramfs-modules ]; then
	while read -r mod; do
		case "$mod" in '' | '#'*) continue ;; esac
		insmod "$mod" || msg "insmod $mod failed (continuing)"
	done </etc/initramfs-modules
fi

# Wait for the root device, bounded: ticks of 0.1 s.
dev=
tick=0
limit=$((rootwait * 10))
while :; do
	case "$root" in
	UUID=* | LABEL=*) dev=$(findfs "$root" 2>/dev/null) ;;
	*) dev="$root" ;;
	esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	if [ "$tick" -ge "$limit" ]; then
		msg "root device $root did not appear within ${rootwait}s; block devices:"
		ls /sys/class/block 2>/dev/null
		fail "no root device"
	fi
	tick=$((tick + 1))
	sleep 0.1
done

mkdir -p /newroot
opts=rw
[ -n "$rootflags" ] && opts="rw,$rootflags"
mount -t "$rootfstype" -o "$opts" "$dev" /newroot ||
	fail "cannot mount $dev ($rootfstype, $opts) on /newroot"

if [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
	umount /newroot
	fail "init $init not found on $dev"
fi

for d in dev proc sys; do
	if [ -d "/newroot/$d" ]; then
		mount --move "/$d" "/newroot/$d" || umount -l "/$d"
	else
		umount -l "/$d"
	fi
done

exec switch_root /newroot "$init"
fail "switch_root /newroot $init failed"
