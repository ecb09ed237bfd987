#!/usr/bin/env bash
# The system packages the test suite needs beyond the venv: Debian's prometheus (promtool + the server) and
# slurm-wlm + munge (the one-node Slurm cluster). Installs them where it can (root, or passwordless sudo, with
# apt-get); elsewhere it says which are missing and which tests will skip. `make test` and .ci/run call it.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
for binary in slurmctld slurmd sbatch munged; do
    command -v "$binary" >/dev/null || { missing+=(slurm); break; }
done
[ ${#missing[@]} -eq 0 ] && exit 0

can_install() {
    command -v apt-get >/dev/null || return 1
    [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null
}

if can_install; then
    echo "installing the test suite's system packages: ${missing[*]}"
    bash deploy/ci/install-prometheus.sh || exit 1
    bash deploy/slurm/cluster.sh install || exit 1
    exit 0
fi
if [ "${CI:-}" = true ]; then
    echo "error: CI cannot install ${missing[*]} (needs apt-get as root or passwordless sudo)" >&2
    exit 1
fi
cat >&2 <<MSG
warning: cannot install ${missing[*]} here (needs apt-get as root or passwordless sudo).
  The Prometheus and Slurm tests will skip, and the suite reports every non-GPU skip at its end (in CI, CI=true,
  such a skip fails the run). Install them with: sudo bash deploy/ci/install-prometheus.sh &&
  sudo bash deploy/slurm/cluster.sh install
MSG
exit 0
