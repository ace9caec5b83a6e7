#!/bin/sh
# updates: signed A/B updates with automatic rollback (docs/updates.md). Runs on the root file
# system ($1).
set -eu
R="$1"

chroot "$R" systemctl enable appliance-update-health.service appliance-update.timer
