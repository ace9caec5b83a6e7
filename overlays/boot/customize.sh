#!/bin/sh
# boot: the read-only verified root, the data partition, the boot report. Runs on the root file
# system ($1).
set -eu
R="$1"

# The Raspberry Pi boot files are put on the ESP by the build; raspi-firmware's own copies in
# /boot/firmware would only take space.
if [ -d "$R/boot/firmware" ]; then
    find "$R/boot/firmware" -mindepth 1 -delete
fi

# dracut's service that unpacks the initrd into /run/initramfs for the shutdown: a bash script
# at every boot that finds nothing to do (the appliance's initrd does not ask to come back at
# shutdown, so there is no /run/initramfs/.need_shutdown).
chroot "$R" systemctl mask dracut-shutdown.service
chroot "$R" systemctl enable appliance-prepare-data.service appliance-firstboot.service \
    appliance-boot-report.service
