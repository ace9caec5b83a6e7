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

# udev rules for hardware a meeting server does not have or use (cameras, sound, joysticks,
# touchpads, CD drives, tape, InfiniBand, FIDO keys, sensors, btrfs, MTD flash; and
# hwclock-set, a shell script that exits at once under systemd), masked the standard way (a
# link to /dev/null in /etc/udev/rules.d): udev checks every rule against every device it goes
# through at boot, about 260 even in a small virtual machine. Disks, network cards, serial
# consoles, input, seats and the power button keep Debian's rules.
mkdir -p "$R/etc/udev/rules.d"
for rules in 60-cdrom_id 60-drm 60-evdev 60-fido-id 60-infiniband 60-persistent-alsa \
    60-persistent-storage-tape 60-persistent-v4l 60-sensor 64-btrfs 70-camera 70-joystick \
    70-mouse 70-touchpad 75-probe_mtd 78-sound-card 85-hwclock; do
    if [ -e "$R/usr/lib/udev/rules.d/$rules.rules" ]; then
        ln -sfn /dev/null "$R/etc/udev/rules.d/$rules.rules"
    fi
done
