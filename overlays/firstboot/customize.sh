#!/bin/sh
# firstboot: the setup of a new machine (seed file or wizard) by appliance-admin. Runs on the
# root file system ($1).
set -eu
R="$1"

chroot "$R" systemctl enable appliance-setup.service appliance-wizard.service

# ssl-cert's install script makes a "snakeoil" key pair, the same in every copy of the image
# (and named after the build machine): no private key may ship in an image. The setup makes
# each machine's own key and certificate.
rm -f "$R/etc/ssl/private/ssl-cert-snakeoil.key" "$R/etc/ssl/certs/ssl-cert-snakeoil.pem"
find "$R/etc/ssl/certs" -maxdepth 1 -type l -lname 'ssl-cert-snakeoil.pem' -delete
