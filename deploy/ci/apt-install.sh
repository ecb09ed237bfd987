#!/usr/bin/env bash
# apt-get install PACKAGE... quietly and non-interactively, without starting the services the packages ship
# (CI and the tests start their own, on loopback). Waits for another apt/dpkg run to release its lock.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# policy-rc.d exit 101 tells invoke-rc.d (the packages' postinst) not to start the service. Only ours is removed.
ours=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    ours=1
fi
trap 'if [ -n "$ours" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi' EXIT

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$@" >/dev/null
