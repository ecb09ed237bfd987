#!/usr/bin/env bash
# Installs Debian's prometheus package (promtool + the server) for `make check-deploy` and the Prometheus
# integration test, without leaving the packaged system service running. Idempotent; non-interactive.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    exit 0
fi
bash "$(dirname "$0")/apt-install.sh" prometheus

# On a systemd host the unit is enabled at boot; never leave it running now (we start our own, on 127.0.0.1).
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then systemctl stop prometheus; else sudo systemctl stop prometheus; fi
fi
promtool --version | head -1
