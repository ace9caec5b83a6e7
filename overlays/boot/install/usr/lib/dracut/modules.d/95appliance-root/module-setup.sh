#!/bin/bash
# The appliance's initrd: /init is /usr/lib/appliance/initrd-init (a shell script that opens
# the verified root and hands over to it), and these are the programs it runs. Chosen alone by
# /etc/dracut.conf.d/50-appliance.conf (dracutmodules); the kernel modules are that file's.

# Only when asked for by name.
check() {
    return 255
}

depends() {
    return 0
}

install() {
    inst /bin/dash
    ln -sf dash "${initdir}/bin/sh"
    inst_multiple mount switch_root modprobe blkid sleep od dmsetup
    inst_script /usr/lib/appliance/initrd-init /init
    inst_multiple -o /etc/modprobe.d/*.conf /usr/lib/modprobe.d/*.conf /etc/modules-load.d/*.conf
    mkdir -p "${initdir}/sysroot"
    printf '%s\n' \
        "proc /proc proc nosuid,nodev,noexec 0 0" \
        "sysfs /sys sysfs nosuid,nodev,noexec 0 0" \
        "devtmpfs /dev devtmpfs nosuid,mode=0755 0 0" > "${initdir}/etc/fstab.initrd"
}
