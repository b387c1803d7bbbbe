#!/bin/sh
# banger's image customisation. mmdebstrap runs it inside the new root
# (chroot, with /proc, /sys and /dev mounted) once the packages are
# installed and banger's files (guest/) are copied in. Fixed text: nothing
# of the build's input reaches this shell.
set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
rm -f "$0"

# The user banger logs in as: key-only SSH, passwordless sudo. Password
# '*' is "no password" without locking the account.
useradd --uid 1000 --user-group --create-home --home-dir /home/banger --shell /bin/bash banger
usermod --password '*' banger
install -d -m 0700 -o banger -g banger /home/banger/.ssh
chmod 0440 /etc/sudoers.d/banger
visudo -c -q -f /etc/sudoers.d/banger

# No SSH host keys in the image: every VM gets its own.
rm -f /etc/ssh/ssh_host_*

# banger writes each VM's /etc/systemd/network/10-banger.network.
systemctl enable systemd-networkd.service

# The image's machine-id is empty, so each VM's first boot is a systemd
# "first boot": the first-boot wizard would wait for input on the console.
# The rest are periodic jobs a throwaway VM does not need, and the getty
# on tty1 and getty-static's on tty2-6 (started when dbus is absent):
# screens banger's VMs do not have. The serial getty stays.
systemctl mask systemd-firstboot.service \
	apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
	e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer \
	getty@tty1.service getty-static.service

# A clean identity: systemd makes a machine-id at each VM's first boot.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id

# Boot time: the image is complete, so the units that only refresh caches
# after /usr changed (ldconfig, sysusers, hwdb, the journal catalog) have
# nothing to do; marking /etc and /var up to date skips them at every boot
# (ConditionNeedsUpdate). Measured under TCG: systemd-sysusers alone sat on
# the path to sshd for about 0.5 s.
touch /etc/.updated /var/.updated
