#!/usr/bin/env bash
# A real two-node SLURM cluster on one Linux machine, for developing and testing the
# cluster/ scripts (issue 8). Root only; Debian/Ubuntu (installs slurm-wlm and munge).
#
#   cluster/dev/local_slurm.sh start    # install if missing, start, wait until both nodes are idle
#   cluster/dev/local_slurm.sh status   # what runs, sinfo/squeue
#   cluster/dev/local_slurm.sh stop     # stop what `start` started, remove namespaces/bridge/state
#   eval "$(cluster/dev/local_slurm.sh env)"   # SLURM_CONF for sbatch/squeue in this shell
#
# Each node is a network namespace with its own address on a private bridge:
#   bridge dqnbr0 10.77.0.1/24 (root namespace: slurmctld, munged), dqn1 10.77.0.11, dqn2 10.77.0.12.
# Only these addresses are ever used. Both nodes see the whole machine (CPUs, memory, /tmp, $HOME):
# like a cluster's shared filesystem, unlike its node-local /tmp.
#
# Traps (see shared notes ray-slurm.md):
# - slurmd is started with `nsenter --net=`, not `ip netns exec`: the latter remounts /sys and
#   slurmd then fails its cgroup set-up.
# - slurmctld refuses a state dir written for another ClusterName; the state dir is ours alone.
# - proctrack/linuxproc does not clean up daemonised children (Ray's gcs_server survives a job), so
#   `stop` kills every process left in the two namespaces: they can only be this cluster's.
# - Each node declares CPUs=2 (config_overrides: whatever the machine has), so two jobs with one
#   CPU per node run at once, as the tests need.
#
# Environment: DQLRAY_SLURM_DIR (state, config, logs; default /var/lib/dqlray-slurm),
# DQLRAY_SLURM_TIMEOUT (seconds to wait for idle nodes; default 90).
set -euo pipefail

DIR=${DQLRAY_SLURM_DIR:-/var/lib/dqlray-slurm}
CONF=$DIR/etc/slurm.conf
TIMEOUT=${DQLRAY_SLURM_TIMEOUT:-90}
BRIDGE=dqnbr0
BRIDGE_ADDR=10.77.0.1
NODES=(dqn1 dqn2)
declare -A ADDR=([dqn1]=10.77.0.11 [dqn2]=10.77.0.12)
SYSTEM_CONF=/etc/slurm/slurm.conf
export SLURM_CONF=$CONF

log() { echo "local_slurm: $*" >&2; }
die() { echo "local_slurm: ERROR: $*" >&2; exit 1; }

pid_alive() {  # pid_alive PIDFILE
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (namespaces, daemons)"; }

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v nsenter >/dev/null || missing+=(util-linux)
    command -v pkill >/dev/null || missing+=(procps)
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$DIR/log/apt.log" 2>&1 || die "apt-get update failed, see $DIR/log/apt.log"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge iproute2 util-linux procps \
        >>"$DIR/log/apt.log" 2>&1 || die "apt-get install failed, see $DIR/log/apt.log"
}

setup_network() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    local n
    for n in "${NODES[@]}"; do
        [[ -e /run/netns/$n ]] || ip netns add "$n"
        if ! ip link show "v$n" >/dev/null 2>&1; then
            ip link add "v$n" type veth peer name eth0 netns "$n"
            ip link set "v$n" master "$BRIDGE" up
        fi
        ip -n "$n" addr replace "${ADDR[$n]}/24" dev eth0
        ip -n "$n" link set eth0 up
        ip -n "$n" link set lo up   # Ray talks to its own services over 127.0.0.1
    done
}

write_config() {
    local mem_kb node_mb
    mem_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    node_mb=$((mem_kb * 35 / 100 / 1024))  # two nodes share the machine's memory
    mkdir -p "$DIR/etc" "$DIR/ctld" "$DIR/run" "$DIR/log" "$DIR/spool"
    cat >"$CONF" <<EOF
# Written by cluster/dev/local_slurm.sh: dqlray's local two-node test cluster.
ClusterName=dqlray
SlurmctldHost=$(hostname -s)($BRIDGE_ADDR)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
# Nodes are what this file says, whatever the machine has (both "nodes" share its CPUs and memory).
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
# Fast turnaround for tests: dependent jobs start within seconds, finished jobs stay visible.
SchedulerParameters=bf_interval=2,sched_min_interval=100000
MinJobAge=900
KillWait=15
InactiveLimit=0
SlurmdTimeout=120
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=dqn1 NodeAddr=${ADDR[dqn1]} CPUs=2 RealMemory=$node_mb State=UNKNOWN
NodeName=dqn2 NodeAddr=${ADDR[dqn2]} CPUs=2 RealMemory=$node_mb State=UNKNOWN
PartitionName=dqn Nodes=dqn1,dqn2 Default=YES MaxTime=INFINITE State=UP
EOF
    # So that a developer's plain `sbatch` finds us too; never replace a real site config.
    if [[ ! -e $SYSTEM_CONF && ! -L $SYSTEM_CONF ]]; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        ln -s "$CONF" "$SYSTEM_CONF"
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0  # a working munged is there already (ours or the system's)
    fi
    [[ -s /etc/munge/munge.key ]] || {
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 0400 /etc/munge/munge.key
    }
    mkdir -p /run/munge /var/lib/munge
    chown munge:munge /run/munge 2>/dev/null || true
    munged --force --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" ||
        die "munged did not start, see $DIR/log/munged.log"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge does not answer, see $DIR/log/munged.log"
}

start_daemons() {
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        rm -f "$DIR/ctld/clustername"
        /usr/sbin/slurmctld -f "$CONF" ||
            die "slurmctld did not start, see $DIR/log/slurmctld.log"
    fi
    local n
    for n in "${NODES[@]}"; do
        mkdir -p "$DIR/spool/$n"
        pid_alive "$DIR/run/slurmd-$n.pid" && continue
        nsenter --net="/run/netns/$n" /usr/sbin/slurmd -f "$CONF" -N "$n" ||
            die "slurmd $n did not start, see $DIR/log/slurmd-$n.log"
    done
}

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) states=""
    while ((SECONDS < deadline)); do
        states=$(sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [[ $states == *"dqn1=idle"* && $states == *"dqn2=idle"* ]] ||
           [[ $states =~ dqn1=(idle|mix|alloc) && $states =~ dqn2=(idle|mix|alloc) && $states != *'*'* ]]; then
            log "ready: $states(export SLURM_CONF=$CONF)"
            return 0
        fi
        sleep 0.5
    done
    die "nodes not idle after ${TIMEOUT}s (sinfo: ${states:-no answer}); logs in $DIR/log"
}

cmd_start() {
    need_root
    mkdir -p "$DIR/log"
    install_packages
    setup_network
    if ! pid_alive "$DIR/run/slurmctld.pid" || [[ ! -s $CONF ]]; then
        write_config
    fi
    start_munge
    start_daemons
    wait_idle
}

kill_pidfile() {  # kill_pidfile FILE: TERM, then KILL after 5 s
    local f=$1 pid
    [[ -s $f ]] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

kill_namespace_procs() {  # every process in our namespaces belongs to this test cluster
    local n pids
    for n in "${NODES[@]}"; do
        [[ -e /run/netns/$n ]] || continue
        pids=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
        [[ -n ${pids// /} ]] || continue
        log "killing processes left in $n: $pids"
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
    done
}

cmd_stop() {
    need_root
    if pid_alive "$DIR/run/slurmctld.pid"; then
        scancel --full --quiet --partition=dqn 2>/dev/null || true
    fi
    local n
    for n in "${NODES[@]}"; do kill_pidfile "$DIR/run/slurmd-$n.pid"; done
    kill_pidfile "$DIR/run/slurmctld.pid"
    kill_namespace_procs
    kill_pidfile "$DIR/run/munged.pid"   # only a munged that we started
    for n in "${NODES[@]}"; do
        ip link del "v$n" 2>/dev/null || true
        [[ -e /run/netns/$n ]] && ip netns del "$n"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$CONF" ]]; then
        rm -f "$SYSTEM_CONF"
    fi
    rm -rf "$DIR"
    log "stopped"
}

cmd_status() {
    local rc=0 n
    if pid_alive "$DIR/run/slurmctld.pid"; then echo "slurmctld: running"; else echo "slurmctld: stopped"; rc=3; fi
    for n in "${NODES[@]}"; do
        if pid_alive "$DIR/run/slurmd-$n.pid"; then echo "slurmd $n: running (${ADDR[$n]})"; else
            echo "slurmd $n: stopped"
            rc=3
        fi
    done
    if ((rc == 0)); then
        sinfo -N -l || rc=3
        squeue || rc=3
    fi
    echo "export SLURM_CONF=$CONF"
    return $rc
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
