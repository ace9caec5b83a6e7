#!/bin/sh
# meeting: nginx, Prosody and coturn, configured by the first-boot setup. Runs on the root file
# system ($1).
set -eu
R="$1"

# The TLS key on /data/config/tls is readable by the group ssl-cert: nginx's master (root),
# prosody and coturn read it.
for user in prosody turnserver; do
    if chroot "$R" getent passwd "$user" >/dev/null; then
        chroot "$R" adduser --quiet "$user" ssl-cert
    fi
done

# Configuration the machine writes at first boot lives on /data/config; the read-only root
# points there (see docs/architecture.md, "Where state lives").
ln -sfn /data/config/localtime "$R/etc/localtime"
rm -f "$R/etc/timezone"
ln -sfn /data/config/coturn/turnserver.conf "$R/etc/turnserver.conf"
mkdir -p "$R/etc/jitsi/jicofo" "$R/etc/jitsi/videobridge"
ln -sfn /data/config/jitsi/jicofo.conf "$R/etc/jitsi/jicofo/jicofo.conf"
ln -sfn /data/config/jitsi/jvb.conf "$R/etc/jitsi/videobridge/jvb.conf"
# Debian's sample virtual host and the sites nginx ships are replaced by /data/config.
rm -f "$R"/etc/prosody/conf.d/* "$R"/etc/prosody/conf.avail/localhost.cfg.lua
rm -f "$R"/etc/nginx/sites-enabled/* "$R"/etc/nginx/conf.d/*

chroot "$R" systemctl enable appliance-meeting.target appliance-acme.timer appliance-idle.timer
# The meeting services start only once first-boot setup has configured them
# (appliance-meeting.target); nginx runs from the start and shows the setup page until then.
for unit in prosody.service coturn.service jitsi-videobridge2.service jicofo.service; do
    if [ -e "$R/lib/systemd/system/$unit" ] || [ -e "$R/etc/init.d/${unit%.service}" ]; then
        chroot "$R" systemctl disable "$unit" 2>/dev/null || true
    fi
done
