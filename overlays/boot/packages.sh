#!/bin/sh
# boot, in the package layer: the initrd the kernel's install script built with
# install/etc/dracut.conf.d must be the appliance's. Runs on the root file system ($1).
set -eu
R="$1"

# The initrd must be the appliance's (its /init opens the verified root); if the kernel's
# install script built another, build it again, and stop the build if that fails too.
has_appliance_init() {
    chroot "$R" lsinitrd -f /init "/boot/${1##*/}" 2>/dev/null | grep -q "The initrd's /init"
}
for initrd in "$R"/boot/initrd.img-*; do
    [ -e "$initrd" ] || { echo "no initrd was generated in /boot" >&2; exit 1; }
    has_appliance_init "$initrd" && continue
    kver=${initrd##*/initrd.img-}
    chroot "$R" dracut --force --kver "$kver" "/boot/initrd.img-$kver"
    has_appliance_init "$initrd" || {
        echo "$initrd has no /init of the appliance's (dracut module appliance-root)" >&2
        exit 1
    }
done
