#!/bin/sh
# jitsi: Jitsi Meet's own packages, rewired to the appliance's configuration. Runs on the root
# file system ($1).
set -eu
R="$1"

# What Jitsi's install scripts generated for the build's placeholder host name: secrets,
# certificates, accounts and host-named files. Every machine makes its own at first boot.
rm -rf "$R"/etc/jitsi/meet "$R"/etc/prosody/conf.avail/* "$R"/etc/nginx/sites-available/*.conf
rm -f "$R"/etc/jitsi/videobridge/sip-communicator.properties "$R"/etc/jitsi/jicofo/sip-communicator.properties
rm -rf "$R"/var/lib/prosody/*
rm -f "$R"/etc/prosody/certs/* "$R"/usr/local/share/ca-certificates/*.crt
chroot "$R" update-ca-certificates --fresh >/dev/null
# The services' environment files held the generated passwords; the ones below hold none (the
# passwords are in /data/config/jitsi/*.conf, rendered at first boot), and log nowhere.
cat > "$R/etc/jitsi/videobridge/config" <<'JVB'
JVB_OPTS="--apis=,"
JAVA_SYS_PROPS="-Dconfig.file=/etc/jitsi/videobridge/jvb.conf -Dnet.java.sip.communicator.SC_HOME_DIR_LOCATION=/etc/jitsi -Dnet.java.sip.communicator.SC_HOME_DIR_NAME=videobridge -Dnet.java.sip.communicator.SC_LOG_DIR_LOCATION=/run/jitsi-videobridge -Djava.util.logging.config.file=/etc/jitsi/videobridge/logging.properties"
JVB
cat > "$R/etc/jitsi/jicofo/config" <<'JICOFO'
JICOFO_OPTS=""
JAVA_SYS_PROPS="-Dconfig.file=/etc/jitsi/jicofo/jicofo.conf -Dnet.java.sip.communicator.SC_HOME_DIR_LOCATION=/etc/jitsi -Dnet.java.sip.communicator.SC_HOME_DIR_NAME=jicofo -Dnet.java.sip.communicator.SC_LOG_DIR_LOCATION=/run/jicofo -Djava.util.logging.config.file=/etc/jitsi/jicofo/logging.properties"
JICOFO
cp "$R/usr/share/appliance/jitsi/jvb-logging.properties" "$R/etc/jitsi/videobridge/logging.properties"
cp "$R/usr/share/appliance/jitsi/jicofo-logging.properties" "$R/etc/jitsi/jicofo/logging.properties"
