#!/bin/sh
# hardening: CIS Debian 12 Level 1 (docs/cis.md), AppArmor for every network service, the
# firewall. Runs on the root file system ($1).
set -eu
R="$1"

chroot "$R" systemctl enable nftables.service

# Modes git cannot carry: sshd configuration 0600 (CIS 5.1.1), banners 0644 (1.6.4-6).
chmod 0600 "$R/etc/ssh/sshd_config" "$R"/etc/ssh/sshd_config.d/*.conf
chmod 0644 "$R/etc/motd" "$R/etc/issue" "$R/etc/issue.net"
# cron is not installed (systemd timers instead); other packages still create these dirs.
for d in "$R"/etc/cron.hourly "$R"/etc/cron.daily "$R"/etc/cron.weekly "$R"/etc/cron.monthly "$R"/etc/cron.d; do
    if [ -d "$d" ]; then chmod 0700 "$d"; fi
done
if [ -f "$R/etc/crontab" ]; then chmod 0600 "$R/etc/crontab"; fi
# The dynamic motd would print the kernel version (uname): no OS information before login.
rm -f "$R/etc/update-motd.d/10-uname"
# login.defs (5.4.1.1, 5.4.1.3, 5.4.1.4, 5.4.3.3) and the useradd default for INACTIVE (5.4.1.5).
for setting in "PASS_MAX_DAYS 365" "PASS_MIN_DAYS 1" "PASS_WARN_AGE 7" "ENCRYPT_METHOD YESCRYPT" "UMASK 027" \
        "SHA_CRYPT_MIN_ROUNDS 5000" "SHA_CRYPT_MAX_ROUNDS 100000"; do
    key=${setting%% *}
    if grep -Eq "^$key[[:space:]]" "$R/etc/login.defs"; then
        sed -i -E "s/^$key[[:space:]].*/$setting/" "$R/etc/login.defs"
    else
        echo "$setting" >> "$R/etc/login.defs"
    fi
done
chroot "$R" useradd -D -f 45
# Non-login interactive bash (sudo -s) reads /etc/bash.bashrc, not /etc/profile.d.
printf '\n# appliance: umask 027 (CIS 5.4.3.3) and no shell history on disk\numask 027\nunset HISTFILE\n' \
    >> "$R/etc/bash.bashrc"
# PAM (5.3.x): no nullok for pam_unix; faillock and pwhistory through pam-auth-update profiles
# in /usr/share/pam-configs (pwquality's own profile is enabled when libpam-pwquality is in).
sed -i -E 's/[[:space:]]nullok\b//' "$R/usr/share/pam-configs/unix"
DEBIAN_FRONTEND=noninteractive chroot "$R" pam-auth-update --force \
    --enable appliance-faillock appliance-faillock-notify appliance-pwhistory
rm -f "$R"/etc/pam.d/*.pam-old
if grep -q 'pam_unix.so.*nullok' "$R/etc/pam.d/common-auth"; then
    echo "pam-auth-update left nullok in /etc/pam.d/common-auth" >&2
    exit 1
fi
# 5.4.2.4: root has no usable password and is locked (sudo from `admin` is the way in).
chroot "$R" usermod --lock root
# 5.2.7: su only for members of an empty group (the administrator uses sudo).
chroot "$R" groupadd -f -r sugroup
if ! grep -q 'pam_wheel.so use_uid group=sugroup' "$R/etc/pam.d/su"; then
    sed -i -E '/^auth[[:space:]]+sufficient[[:space:]]+pam_rootok.so/a auth       required   pam_wheel.so use_uid group=sugroup' \
        "$R/etc/pam.d/su"
fi
# No login records: console logins would update lastlog through pam_lastlog (sshd's PAM stack
# has none; /var/log is a tmpfs and tmpfiles.d points wtmp/btmp/lastlog at /dev/null anyway).
sed -i -E 's/^([[:space:]]*session[[:space:]]+optional[[:space:]]+pam_lastlog\.so.*)/# appliance: no login records\n# \1/' \
    "$R/etc/pam.d/login"
# The apparmor package's own profiles for lsb_release and nvidia-modprobe (neither a service of
# the appliance, the second not in the image) are disabled the standard way, a link in
# disable/: each profile loaded costs an apparmor_parser run before sysinit.target at every boot.
for profile in lsb_release nvidia_modprobe; do
    if [ -f "$R/etc/apparmor.d/$profile" ]; then
        ln -sfn "../$profile" "$R/etc/apparmor.d/disable/$profile"
    fi
done
# Every enabled AppArmor profile of the image must compile; a broken one would fail the unit it
# guards. The compiled policy stays in the verified root, so apparmor.service loads it at boot
# instead of compiling every profile again (over ten seconds of every boot under emulation). The
# parser keeps a compiled policy per set of kernel features: usr/lib/appliance/apparmor/
# kernel-features holds those of the image's kernel, as that kernel reports them. Should a
# kernel report others, the parser finds no compiled policy for them and compiles at boot, as
# without one; the meeting scenario's hardening check says so (see docs/benchmarks.md).
cache=/usr/lib/appliance/apparmor/cache
rm -rf "$R$cache"
mkdir -p "$R$cache"
for profile in "$R"/etc/apparmor.d/*; do
    if [ -f "$profile" ] && [ ! -e "$R/etc/apparmor.d/disable/${profile##*/}" ]; then
        chroot "$R" apparmor_parser --skip-kernel-load --write-cache --cache-loc "$cache" \
            --kernel-features /usr/lib/appliance/apparmor/kernel-features "/etc/apparmor.d/${profile##*/}"
    fi
done
# At boot: the first location (a tmpfs) takes what the parser writes, the second is read.
if ! grep -q '^cache-loc' "$R/etc/apparmor/parser.conf"; then
    echo "cache-loc=/var/cache/apparmor,$cache" >>"$R/etc/apparmor/parser.conf"
fi
