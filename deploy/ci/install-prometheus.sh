#!/usr/bin/env bash
# Installs Debian's prometheus package (promtool + the server) for `make check-deploy` and the Prometheus
# integration test, without leaving the packaged system service running. Idempotent; non-interactive.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# policy-rc.d exit 101 tells invoke-rc.d (the package's postinst) not to start the service. Only ours is removed.
ours=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    ours=1
fi
trap 'if [ -n "$ours" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi' EXIT

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# On a systemd host the unit is enabled at boot; never leave it running now (we start our own, on 127.0.0.1).
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl stop prometheus
fi
promtool --version | head -1
