#!/bin/sh
# banger initramfs /init: load the modules listed in /etc/initramfs-modules,
# mount the root disk named by root= and switch_root into it.
# Kernel command line: root= (default /dev/vda, UUID=/LABEL= also work),
# rootfstype= (default ext4), rootflags= (extra mount options),
# init= (default /sbin/init), rootwait= (seconds to wait for root, default 10),
# banger.config=1 (a config disk must be there: wait for it like the root).
# A config disk (see apply_config) is applied onto the root before switch_root.
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
needconfig=
set -f
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) root="${arg#root=}" ;;
	rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
	rootflags=*) rootflags="${arg#rootflags=}" ;;
	init=*) init="${arg#init=}" ;;
	rootwait=*) rootwait="${arg#rootwait=}" ;;
	banger.config=1) needconfig=1 ;;
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

# --- Identity from banger's config disk -------------------------------------
# The config disk is a read-only block device, not the root, whose first
# sector starts with the magic below; from byte 512 on it holds a newc cpio
# archive of the VM's identity files with their modes and owners (written by
# banger's internal/identity). Only a fixed list of paths is applied, only
# regular files and directories, never through a symlink in the root: an
# archive with anything else is refused whole. No config disk: nothing is
# applied (unless banger.config=1 says there must be one).
CONFIG_MAGIC=BANGER-CONFIG-V1

find_config() {
	for sys in /sys/class/block/*; do
		name=${sys##*/}
		[ -b "/dev/$name" ] && [ "/dev/$name" != "$dev" ] || continue
		[ "$(cat "$sys/ro" 2>/dev/null)" = 1 ] || continue
		[ "$(dd if="/dev/$name" bs=16 count=1 2>/dev/null)" = "$CONFIG_MAGIC" ] || continue
		echo "/dev/$name"
		return 0
	done
	return 1
}

# ncomp prints the number of /-separated components of $1.
ncomp() (
	IFS=/
	set -f
	# shellcheck disable=SC2086
	set -- $1
	echo $#
)

# config_allowed NAME: the relative paths an archive may hold.
config_allowed() {
	case "$1" in
	'' | /* | *[!A-Za-z0-9._@+/-]* | */ | *//*) return 1 ;;
	esac
	case "/$1/" in */../* | */./*) return 1 ;; esac
	n=$(ncomp "$1")
	case "$1" in
	etc/hostname | etc/hosts | etc/machine-id | etc/resolv.conf | etc/systemd | etc/systemd/network | \
		etc/systemd/network/10-banger.network | etc/ssh | root | root/.ssh | root/.ssh/authorized_keys | home)
		return 0 ;;
	etc/ssh/ssh_host_*_key | etc/ssh/ssh_host_*_key.pub) [ "$n" = 3 ] ;;
	home/*/.ssh/authorized_keys) [ "$n" = 4 ] ;;
	home/*/.ssh) [ "$n" = 3 ] ;;
	home/*) [ "$n" = 2 ] ;;
	*) return 1 ;;
	esac
}

# real_dirs NAME: every directory above /newroot/NAME is a real directory
# (not a symlink), so that writing NAME stays inside the root.
real_dirs() (
	parent=${1%/*}
	[ "$parent" = "$1" ] && return 0
	IFS=/
	set -f
	p=/newroot
	# shellcheck disable=SC2086
	for c in $parent; do
		p="$p/$c"
		[ ! -L "$p" ] && [ -d "$p" ] || return 1
	done
)

apply_config() {
	cfg=$1
	msg "applying identity from config disk $cfg"
	stage=/config
	rm -rf "$stage" /config.cpio /config.list
	mkdir -m 0700 "$stage" || fail "config disk: cannot make $stage"
	dd if="$cfg" bs=512 skip=1 2>/dev/null >/config.cpio || fail "config disk $cfg: cannot read it"
	cpio -t </config.cpio >/config.list 2>/dev/null || fail "config disk $cfg: not a cpio archive"
	hostkeys=
	while IFS= read -r name; do
		config_allowed "$name" || fail "config disk $cfg: refused: $name is not a path banger applies"
		case "$name" in etc/ssh/ssh_host_*) hostkeys=1 ;; esac
	done </config.list
	cpio -tv </config.cpio 2>/dev/null | while read -r perm rest; do
		case "$perm" in -* | d*) ;; *) echo "$rest" ;; esac
	done >/config.bad
	[ -s /config.bad ] && fail "config disk $cfg: refused: entries that are neither files nor directories: $(cat /config.bad)"
	(cd "$stage" && cpio -i -d </config.cpio 2>/dev/null) || fail "config disk $cfg: cannot unpack it"

	if [ -n "$hostkeys" ] && [ -d /newroot/etc/ssh ] && [ ! -L /newroot/etc/ssh ] && [ ! -L /newroot/etc ]; then
		for f in /newroot/etc/ssh/ssh_host_*; do
			[ -L "$f" ] || [ -f "$f" ] || continue
			rm -f "$f" || fail "config disk: cannot remove $f"
		done
	fi
	while IFS= read -r name; do
		src="$stage/$name"
		dst="/newroot/$name"
		real_dirs "$name" || fail "config disk: refused: a directory above $dst is missing or a symlink"
		[ ! -L "$src" ] || fail "config disk: refused: $name is a symlink"
		owner=$(stat -c %u:%g "$src") && mode=$(stat -c %a "$src") || fail "config disk: cannot stat $name"
		if [ -d "$src" ]; then
			if [ -L "$dst" ] || { [ -e "$dst" ] && [ ! -d "$dst" ]; }; then
				fail "config disk: refused: $dst is not a directory"
			fi
			if [ ! -d "$dst" ]; then
				mkdir "$dst" || fail "config disk: cannot make $dst"
			else
				# An existing directory keeps its mode and owner, but .ssh.
				case "$name" in */.ssh) ;; *) continue ;; esac
			fi
			chown "$owner" "$dst" && chmod "$mode" "$dst" || fail "config disk: cannot set mode and owner of $dst"
		elif [ -f "$src" ]; then
			[ -d "$dst" ] && [ ! -L "$dst" ] && fail "config disk: refused: $dst is a directory"
			new="$dst.banger-new"
			rm -f "$new" &&
				cp "$src" "$new" &&
				chown "$owner" "$new" &&
				chmod "$mode" "$new" &&
				mv -f "$new" "$dst" || fail "config disk: cannot write $dst"
		else
			fail "config disk: refused: $name is not a file or directory"
		fi
	done </config.list
	sync
	rm -rf "$stage" /config.cpio /config.list /config.bad
	msg "identity applied"
}

cfgdev=$(find_config)
if [ -z "$cfgdev" ] && [ -n "$needconfig" ]; then
	tick=0
	while [ -z "$cfgdev" ]; do
		[ "$tick" -ge "$limit" ] && fail "banger.config=1 but no config disk appeared within ${rootwait}s"
		tick=$((tick + 1))
		sleep 0.1
		cfgdev=$(find_config)
	done
fi
[ -n "$cfgdev" ] && apply_config "$cfgdev"

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
