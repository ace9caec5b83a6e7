#!/bin/sh
# boot, in the package layer: the initrd the kernel's install script built with
# install/etc/dracut.conf.d must be able to set up dm-verity. Runs on the root file system ($1).
set -eu
R="$1"

# The initrd must be able to set up dm-verity; stop the build here if it cannot.
for initrd in "$R"/boot/initrd.img-*; do
    [ -e "$initrd" ] || { echo "no initrd was generated in /boot" >&2; exit 1; }
done
if ! chroot "$R" lsinitrd "/boot/${initrd##*/}" 2>/dev/null | grep -q 'systemd-veritysetup'; then
    kver=${initrd##*/initrd.img-}
    chroot "$R" dracut --force --kver "$kver" "/boot/initrd.img-$kver"
fi
