#!/usr/bin/env bash
# A Slurm cluster on loopback for tests: Debian's slurm-wlm + munge, no cgroups, no slurmdbd. One node by default;
# CHARGPT_SLURM_NODES=N runs N slurmd daemons on this host (Slurm's multiple-slurmd mode, which Debian's build has),
# nodes <hostname>-1..N, all NodeAddr 127.0.0.1, each on its own port (CHARGPT_SLURM_SLURMD_PORT, +1, ...). Every
# node declares the whole host's CPUs, so N nodes oversubscribe it N times: fine for tests, not for benchmarks.
#
#   deploy/slurm/cluster.sh install   apt-get install slurm-wlm munge (idempotent, quiet, services not started)
#   deploy/slurm/cluster.sh start     write the config under $CHARGPT_SLURM_DIR, start munged, slurmctld, the
#                                     slurmd(s), wait until every node is idle
#   deploy/slurm/cluster.sh status    sinfo of the running cluster (exit 1 when it is not up)
#   deploy/slurm/cluster.sh stop      stop the three daemons (the state directory stays for their logs)
#   deploy/slurm/cluster.sh env       the line to `eval` so sbatch/srun/squeue/scancel use this cluster
#
# Everything lives under CHARGPT_SLURM_DIR (default /tmp/chargpt-slurm): slurm.conf, the munge key and socket,
# spool and state directories, pid files and logs. Clients find the cluster through SLURM_CONF, munge through
# AuthInfo in that file, so a system-wide Slurm or munge on the same machine is not touched.
set -euo pipefail

STATE="${CHARGPT_SLURM_DIR:-/tmp/chargpt-slurm}"
CTLD_PORT="${CHARGPT_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${CHARGPT_SLURM_SLURMD_PORT:-6818}"
NODES="${CHARGPT_SLURM_NODES:-1}"
WAIT_S="${CHARGPT_SLURM_WAIT_S:-60}"
export SLURM_CONF="$STATE/slurm.conf"

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return 0
    fi
    bash "$(dirname "$0")/../ci/apt-install.sh" slurm-wlm munge
    slurmctld -V
}

node_names() {  # one node: this host's name (as before); several: <hostname>-1 .. <hostname>-N
    if [ "$NODES" -eq 1 ]; then hostname; else seq -f "$(hostname)-%g" "$NODES"; fi
}

# The node lines: the hardware exactly as slurmd detects this machine (CPUs, sockets, cores, threads, memory), on
# loopback; each node its own slurmd port (with one node, SlurmdPort's).
node_lines() {
    local hardware name i=0
    hardware="$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')"
    for name in $(node_names); do
        echo "NodeName=$name $hardware NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i))" \
            "State=UNKNOWN"
        i=$((i + 1))
    done
}

write_config() {
    mkdir -p "$STATE"/{munge,ctld,log,jobs}
    chmod 700 "$STATE/munge"
    if [ ! -s "$STATE/munge/munge.key" ]; then
        (umask 077 && head -c 1024 /dev/urandom >"$STATE/munge/munge.key")
    fi
    cat >"$SLURM_CONF" <<CONF
# Written by deploy/slurm/cluster.sh: one node on loopback, no cgroups (containers), no accounting daemon.
ClusterName=chargpt
SlurmctldHost=$(hostname)(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/ctld
# %n: the node's name, so several slurmd daemons on this host keep apart.
SlurmdSpoolDir=$STATE/spool-%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
# Process tracking by parent pid and no task binding: neither needs cgroups, which containers rarely delegate.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd, so plain sacct says accounting is disabled; finished jobs go one per line to the job completion
# log, which "sacct -c" reads (state, exit code, start/end), and squeue/scontrol show them for MinJobAge.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SchedulerType=sched/backfill
# Preemption: a job of the "urgent" partition (higher PriorityTier) requeues "debug" jobs it needs room from, as
# a cluster's high-priority partition or QOS would; requeued jobs wait cred_expire (120 s) before they may start.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# Refuse at submission what this partition can never run (e.g. --nodes=2 here) instead of pending forever.
EnforcePartLimits=ALL
# Keep finished jobs visible to squeue/scontrol for 10 minutes (the default is 5).
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
$(node_lines)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2
CONF
}

running() {  # pid file names a live process
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

slurmd_pids() {  # pid files of the slurmd daemons
    local name
    for name in $(node_names); do echo "$STATE/slurmd-$name.pid"; done
}

all_running() {
    local pidfile
    running "$STATE/slurmctld.pid" || return 1
    for pidfile in $(slurmd_pids); do running "$pidfile" || return 1; done
}

start() {
    if all_running; then
        wait_idle
        return 0
    fi
    stop >/dev/null 2>&1 || true
    write_config
    munged --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed" --force
    slurmctld -f "$SLURM_CONF" -i
    local name
    for name in $(node_names); do slurmd -f "$SLURM_CONF" -N "$name"; done
    wait_idle
}

wait_idle() {
    local deadline=$((SECONDS + WAIT_S)) idle="" state=""
    while [ $SECONDS -lt $deadline ]; do
        # one line per node (and partition): all of them idle, and every node there
        state="$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u || true)"
        idle="$(grep -c ' idle$' <<<"$state" || true)"
        if [ "$idle" -eq "$NODES" ] && [ "$(wc -l <<<"$state")" -eq "$NODES" ]; then
            echo "slurm: $NODES node(s) idle: $(node_names | tr '\n' ' ')(SLURM_CONF=$SLURM_CONF)"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm: the nodes did not become idle in ${WAIT_S}s (states: ${state//$'\n'/, }); logs in $STATE/log" >&2
    tail -n 20 "$STATE"/log/*.log >&2 || true
    return 1
}

stop() {  # SIGTERM to every daemon at once, then up to 10 s before SIGKILL
    local pidfile pids=()
    for pidfile in "$STATE"/slurmd-*.pid "$STATE/slurmctld.pid" "$STATE/munge/munged.pid"; do
        if running "$pidfile"; then pids+=("$(cat "$pidfile")"); fi
        rm -f "$pidfile"
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    kill "${pids[@]}" 2>/dev/null || true
    local pid alive
    for _ in $(seq 100); do
        alive=""
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ -n "$alive" ] || return 0
        sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
}

status() {
    all_running || { echo "slurm: not running" >&2; return 1; }
    sinfo -N
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 install|start|stop|status|env" >&2; exit 2 ;;
esac
