# shellcheck shell=bash
# Shared set-up for the SLURM scripts in cluster/ (sourced, not run). Needs DQLRAY_ROOT set to
# the repository root. Notifications need nothing here: dqlray.notify reads its 0600 config file
# (~/.config/dqlray/notify.yaml) or TELEGRAM_*/DQLRAY_SMTP_* variables, which sbatch passes on.
# Settings, all optional (export them before sbatch; sbatch passes them on):
#   DQLRAY_VENV          virtualenv to activate (default: $DQLRAY_ROOT/.venv)
#   DQLRAY_ENV_SETUP     instead of a virtualenv, a command that sets up Python, e.g.
#                        'module load python/3.11; source ~/miniconda3/bin/activate dqlray'
#   DQLRAY_TMPDIR        node-local directory for Ray's per-job temp dirs (default /tmp)
#   DQLRAY_KEEP_TMP      1: keep each node's Ray temp dir (Ray's logs) after the job
#   DQLRAY_PORT_FIRST    first port of the range Ray's per-job port blocks come from (default 20000)
#   DQLRAY_PORT_BLOCK    ports per job and node (default 200: 12 for Ray's services, the rest for workers)
#   DQLRAY_HEAD_IP       address of the Ray head (default: the first node's SLURM address)
#   DQLRAY_IFACE         network interface whose IPv4 address each node uses for Ray
#   DQLRAY_START_TIMEOUT seconds to wait for the Ray cluster to come up (default 300)

DQLRAY_NODE=${SLURMD_NODENAME:-$(hostname -s)}
DQLRAY_NODE=${DQLRAY_NODE%%.*}

dqlray_log() { echo "dqlray[$DQLRAY_NODE]: $*"; }
dqlray_err() { echo "dqlray[$DQLRAY_NODE]: ERROR: $*" >&2; }
dqlray_die() { dqlray_err "$@"; exit 1; }

# Activate the job's Python environment: one set-up, done on the login node beforehand, never a
# `pip install` in each job (the old job_submission.sh rebuilt its virtualenv in every job).
dqlray_activate() {
    if [[ -n ${DQLRAY_ENV_SETUP:-} ]]; then
        eval "$DQLRAY_ENV_SETUP" || dqlray_die "DQLRAY_ENV_SETUP failed: $DQLRAY_ENV_SETUP"
    else
        local venv=${DQLRAY_VENV:-$DQLRAY_ROOT/.venv}
        [[ -f $venv/bin/activate ]] || dqlray_die "no virtualenv at $venv; create it once on a login" \
            "node, or point DQLRAY_VENV (or DQLRAY_ENV_SETUP) at your Python environment"
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
    fi
    command -v python >/dev/null || dqlray_die "no python on PATH after the environment set-up"
}

# This node's short Ray temp dir. Ray puts Unix sockets at
#   <dir>/session_YYYY-MM-DD_HH-MM-SS_UUUUUU_<pid>/sockets/plasma_store
# and Linux caps socket paths at 107 bytes (ray#7945), so check the length up front.
dqlray_tmpdir() {
    local dir=${DQLRAY_TMPDIR:-/tmp}/dqlray-$SLURM_JOB_ID-$DQLRAY_NODE
    local socket=/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store
    local longest=$((${#dir} + ${#socket}))
    ((longest <= 107)) || dqlray_die "Ray temp dir $dir is too long: its socket paths would be" \
        "$longest bytes (limit 107); set DQLRAY_TMPDIR to a shorter node-local directory"
    echo "$dir"
}

# Remove this user's Ray temp dirs on this node left by jobs that have ended (a cancelled job
# cannot start its cleanup step). Only when SLURM says the job is over.
dqlray_sweep_stale_tmpdirs() {
    local dir id state
    for dir in "${DQLRAY_TMPDIR:-/tmp}"/dqlray-*-"$DQLRAY_NODE"; do
        [[ -d $dir && -O $dir ]] || continue
        id=${dir##*/dqlray-}
        id=${id%-"$DQLRAY_NODE"}
        [[ $id =~ ^[0-9]+$ && $id != "${SLURM_JOB_ID:-}" ]] || continue
        state=$(scontrol show job -o "$id" 2>&1) || true
        if [[ $state == *"Invalid job id"* || $state =~ JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|PREEMPTED|BOOT_FAIL|DEADLINE) ]]; then
            rm -rf "$dir"
        fi
    done
}

# GPUs on this node: SLURM_GPUS_ON_NODE, then SLURM_TRES_PER_TASK (gres/gpu:N or gpu:N),
# then CUDA_VISIBLE_DEVICES (sites set NoDevFiles when none are allocated).
dqlray_gpus() {
    local n=${SLURM_GPUS_ON_NODE:-}
    if [[ -z $n && ${SLURM_TRES_PER_TASK:-} =~ gpu(:[A-Za-z0-9_-]+)?:([0-9]+) ]]; then
        n=${BASH_REMATCH[2]}
    fi
    if [[ -z $n && -n ${CUDA_VISIBLE_DEVICES:-} && $CUDA_VISIBLE_DEVICES != NoDevFiles ]]; then
        local ids
        IFS=, read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
        n=${#ids[@]}
    fi
    [[ $n =~ ^[0-9]+$ ]] || n=0
    echo "$n"
}

# CPUs Ray may use on each node: what SLURM allocated to the one task per node.
dqlray_cpus() {
    local n=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
    echo "${n%%(*}"
}

# IPv4 address of a node, chosen deliberately (ray#22732): DQLRAY_IFACE's address when run on
# that node, else the node's SLURM NodeAddr (resolved if it is a name).
dqlray_node_addr() {
    local node=$1 addr
    if [[ -n ${DQLRAY_IFACE:-} && $node == "$DQLRAY_NODE" ]]; then
        addr=$(ip -4 -o addr show dev "$DQLRAY_IFACE" 2>/dev/null | awk '{print $4; exit}')
        addr=${addr%%/*}
        [[ -n $addr ]] || dqlray_die "no IPv4 address on interface $DQLRAY_IFACE (DQLRAY_IFACE)"
        echo "$addr"
        return
    fi
    addr=$(scontrol show node -o "$node" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
    addr=${addr:-$node}
    if [[ ! $addr =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
        addr=$(getent ahostsv4 "$addr" | awk '{print $1; exit}')
    fi
    [[ -n $addr && $addr != 127.* ]] || dqlray_die "cannot resolve node $node to a network" \
        "address (got '${addr}'); set DQLRAY_HEAD_IP or DQLRAY_IFACE"
    echo "$addr"
}

# Ray's ports, per job: a block of DQLRAY_PORT_BLOCK ports from DQLRAY_PORT_FIRST, the slot
# chosen by the job id and probed free on this node (ray#10154, ray#18053). Sets DQLRAY_PORTS_*.
# The range stays below Linux's ephemeral ports (32768+).
DQLRAY_PORT_BLOCK=${DQLRAY_PORT_BLOCK:-200}
# shellcheck disable=SC2034  # the DQLRAY_PORT_* variables are for the scripts that source this
dqlray_ports() {
    local first=${DQLRAY_PORT_FIRST:-20000} slots base
    slots=$(((32768 - first) / DQLRAY_PORT_BLOCK))
    ((slots > 0)) || dqlray_die "DQLRAY_PORT_FIRST=$first leaves no room below port 32768"
    base=${1:-}
    if [[ -z $base ]]; then
        base=$(python "$DQLRAY_ROOT/cluster/ray_cluster.py" ports --first "$first" \
            --size "$DQLRAY_PORT_BLOCK" --slots "$slots" --start-slot $((SLURM_JOB_ID % slots))) ||
            dqlray_die "no free ports for Ray on this node"
    fi
    DQLRAY_PORTS_BASE=$base
    DQLRAY_PORT_GCS=$base                    # head only
    DQLRAY_PORT_CLIENT=$((base + 1))         # head only
    DQLRAY_PORT_DASHBOARD=$((base + 2))      # head only
    DQLRAY_PORT_NODE_MANAGER=$((base + 3))
    DQLRAY_PORT_OBJECT_MANAGER=$((base + 4))
    DQLRAY_PORT_AGENT_GRPC=$((base + 5))
    DQLRAY_PORT_AGENT_LISTEN=$((base + 6))
    DQLRAY_PORT_RUNTIME_ENV=$((base + 7))
    DQLRAY_PORT_METRICS=$((base + 8))
    DQLRAY_PORT_AUTOSCALER_METRICS=$((base + 9))   # head only; no ray start flag, an env var
    DQLRAY_PORT_DASHBOARD_METRICS=$((base + 10))   # head only; no ray start flag, an env var
    DQLRAY_PORT_WORKER_MIN=$((base + 12))
    DQLRAY_PORT_WORKER_MAX=$((base + DQLRAY_PORT_BLOCK - 1))
}
