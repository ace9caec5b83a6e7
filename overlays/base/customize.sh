#!/bin/sh
# base: a Debian system that many machines can share. Runs on the root file system ($1) once
# the packages and every feature's files are in place.
set -eu
R="$1"

# Nothing that identifies one machine may ship in an image that many machines share.
rm -f "$R"/etc/ssh/ssh_host_*
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R/etc/hostname" "$R/var/lib/systemd/random-seed"
ln -sf /run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"

# The image is updated as a whole, never by apt on the machine.
rm -f "$R"/etc/apt/sources.list "$R"/etc/apt/sources.list.d/*
rm -rf "$R"/var/lib/apt/lists/*

# Mount point of the data partition.
mkdir -p "$R/data"

# The one login account: SSH keys only (no password at all: '*' cannot match any password,
# unlike '!' it does not mark the account locked for sshd). Its keys are on /data
# (AuthorizedKeysFile /data/ssh/authorized_keys/%u), its home in RAM.
if ! chroot "$R" getent passwd admin >/dev/null; then
    chroot "$R" useradd --no-create-home --home-dir /home/admin --shell /bin/bash \
        --groups sudo --comment "Appliance administrator" admin
fi
chroot "$R" usermod --password '*' admin
# Modes git cannot carry: sudoers drop-ins are 0440.
chown root:root "$R/etc/sudoers.d/60-appliance"
chmod 0440 "$R/etc/sudoers.d/60-appliance"

chroot "$R" systemctl enable systemd-networkd.service systemd-resolved.service
# Jobs that write to the read-only root or keep records the appliance does not want.
chroot "$R" systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service
# Device nodes for modules that are not loaded (fuse, tun, loop-control, sound...): the
# appliance opens none of them, and the unit sits before udev on every boot. The permissions
# systemd-tmpfiles-setup-dev sets on those nodes are its only entries (tmpfiles.d's /dev lines);
# it sat before local-fs-pre.target, so before /data, on every boot. udev's rules still set the
# permissions of nodes that appear when their module is loaded.
chroot "$R" systemctl mask kmod-static-nodes.service systemd-tmpfiles-setup-dev.service
# A package that brings a /dev entry other than permissions (a node or directory to create)
# needs that unit: stop the build rather than leave it out.
if cat "$R"/usr/lib/tmpfiles.d/*.conf "$R"/etc/tmpfiles.d/*.conf 2>/dev/null |
    awk '$1 !~ /^#/ && $2 ~ /^\/dev/ && $1 != "z" { print; found = 1 } END { exit !found }' >&2; then
    echo "tmpfiles.d creates the /dev entries above: systemd-tmpfiles-setup-dev.service cannot stay masked" >&2
    exit 1
fi
# What systemd would otherwise do on every boot for features the appliance does not use: the
# kernel's debug, trace, huge-page, FUSE and configfs file systems and the modules behind them,
# the DRM module logind loads ahead of a display, partitioning by systemd-repart (the data
# partition is prepared by appliance-prepare-data), network settings from the kernel command line.
# systemd-pstore would keep the kernel's crash records (from EFI variables) under /var/lib:
# records, which the appliance does not keep.
chroot "$R" systemctl mask sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount \
    sys-fs-fuse-connections.mount sys-kernel-config.mount modprobe@drm.service \
    systemd-repart.service systemd-pstore.service
chroot "$R" systemctl disable systemd-network-generator.service
# Generators run at every start of systemd and every reload. Left: fstab (the mounts) and getty
# (the serial console's login). Gone: the verified root's unit (the initrd's /init opened the
# root; a unit would try again and fail, the device being there), discovering partitions by
# type (the root is named on the command line and the rest in /etc/fstab), encrypted,
# integrity-checked and hibernated volumes, SysV scripts and rc.local (every service has a
# unit), units from the kernel command line (systemd.run=, systemd.debug_shell: a root shell on
# the console) and offline updates.
mkdir -p "$R/etc/systemd/system-generators"
for generator in veritysetup gpt-auto cryptsetup integritysetup hibernate-resume sysv rc-local \
    run debug system-update; do
    ln -sf /dev/null "$R/etc/systemd/system-generators/systemd-$generator-generator"
done
