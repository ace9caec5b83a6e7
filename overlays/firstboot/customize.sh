#!/bin/sh
# firstboot: the setup of a new machine (seed file or wizard) by appliance-admin. Runs on the
# root file system ($1).
set -eu
R="$1"

chroot "$R" systemctl enable appliance-setup.service appliance-wizard.service
