#!/usr/bin/env bash
# Node side of cluster/slurm_ray_head.sh, run with srun on one node of the job (not by hand):
#   slurm_ray_workers.sh --worker HEAD_IP:GCS_PORT   join the job's Ray head; blocks while Ray runs
#   slurm_ray_workers.sh --head HEAD_IP PORT_BASE    start the Ray head (first node); blocks
#   slurm_ray_workers.sh --cleanup                   stop this job's Ray processes on this node
# Every Ray port is pinned to a per-job block probed free on this node, Ray's temp dir is short
# and per job and node, and the job's token (RAY_AUTH_TOKEN_PATH) authenticates the node.
set -euo pipefail
DQLRAY_ROOT=${DQLRAY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# shellcheck source=cluster/common.sh
source "$DQLRAY_ROOT/cluster/common.sh"

[[ -n ${SLURM_JOB_ID:-} ]] || dqlray_die "run by cluster/slurm_ray_head.sh through srun, inside a job"
role=${1:-}
tmp=$(dqlray_tmpdir)
tag=dqlray-$SLURM_JOB_ID-$DQLRAY_NODE
command -v ray >/dev/null || dqlray_activate

if [[ $role == --cleanup ]]; then
    rc=0
    : >"$tmp.stop"   # tells this node's start step that its Ray is stopped on purpose
    python "$DQLRAY_ROOT/cluster/ray_cluster.py" kill --tag "$tag" --path "$tmp" || rc=$?
    [[ ${DQLRAY_KEEP_TMP:-0} == 1 ]] || rm -rf "$tmp"
    for _ in $(seq 25); do [[ -e $tmp.stop ]] || break; sleep 0.2; done
    rm -f "$tmp.stop"
    exit "$rc"
fi

[[ -r ${RAY_AUTH_TOKEN_PATH:-} ]] || dqlray_die "the job's Ray token file '${RAY_AUTH_TOKEN_PATH:-}'" \
    "is not readable on this node (is DQLRAY_TOKEN_DIR on a shared filesystem?)"
rm -f "$tmp.stop"
dqlray_sweep_stale_tmpdirs
[[ -d $tmp ]] || mkdir -m 700 "$tmp" 2>/dev/null || true
[[ -d $tmp && -w $tmp && -O $tmp ]] ||
    dqlray_die "cannot use $tmp as Ray's temp dir on this node (exists, not a directory of $(id -un))"

case $role in
    --head)
        addr=$2
        dqlray_ports "$3"   # probed by the batch script on this same node
        ;;
    --worker)
        head=$2
        addr=$(dqlray_node_addr "$DQLRAY_NODE")
        dqlray_ports ""
        # The head starts at the same time: wait for its GCS port rather than sleeping (ray#25819).
        deadline=$((SECONDS + ${DQLRAY_START_TIMEOUT:-300}))
        until timeout 2 bash -c "exec 3<>/dev/tcp/${head%:*}/${head##*:}" 2>/dev/null; do
            ((SECONDS < deadline)) || dqlray_die "the Ray head $head did not answer within" \
                "${DQLRAY_START_TIMEOUT:-300} s"
            sleep 0.2
        done
        ;;
    *) dqlray_die "usage: $0 --head HEAD_IP PORT_BASE | --worker HEAD_IP:PORT | --cleanup" ;;
esac

args=(
    --block --disable-usage-stats --log-style=record --log-color=false
    --node-ip-address="$addr" --node-name="$DQLRAY_NODE" --temp-dir="$tmp"
    --num-cpus="$(dqlray_cpus)" --num-gpus="$(dqlray_gpus)"
    --node-manager-port="$DQLRAY_PORT_NODE_MANAGER" --object-manager-port="$DQLRAY_PORT_OBJECT_MANAGER"
    --dashboard-agent-grpc-port="$DQLRAY_PORT_AGENT_GRPC"
    --dashboard-agent-listen-port="$DQLRAY_PORT_AGENT_LISTEN"
    --runtime-env-agent-port="$DQLRAY_PORT_RUNTIME_ENV" --metrics-export-port="$DQLRAY_PORT_METRICS"
    --min-worker-port="$DQLRAY_PORT_WORKER_MIN" --max-worker-port="$DQLRAY_PORT_WORKER_MAX"
)
if [[ -n ${SLURM_MEM_PER_NODE:-} ]]; then  # Ray would size its object store from the whole node
    args+=(--object-store-memory=$((SLURM_MEM_PER_NODE * 1024 * 1024 / 4)))
fi
if [[ $role == --head ]]; then
    args+=(--head --port="$DQLRAY_PORT_GCS" --ray-client-server-port="$DQLRAY_PORT_CLIENT"
        --include-dashboard=true --dashboard-host="$addr" --dashboard-port="$DQLRAY_PORT_DASHBOARD")
    # Ray's head also serves Prometheus metrics of the autoscaler and the dashboard on fixed
    # default ports (44217, 44227) that no flag moves: two jobs' heads on one node would collide.
    export AUTOSCALER_METRIC_PORT=$DQLRAY_PORT_AUTOSCALER_METRICS
    export DASHBOARD_METRIC_PORT=$DQLRAY_PORT_DASHBOARD_METRICS
else
    args+=(--address="$head")
fi
read -ra extra <<<"${DQLRAY_RAY_START_ARGS:-}"   # site extras, e.g. --resources='{"bigmem":1}'
args+=("${extra[@]}")

dqlray_log "starting Ray ${role#--} at $addr, ports $DQLRAY_PORTS_BASE-$DQLRAY_PORT_WORKER_MAX, temp dir $tmp"
unset RAY_ADDRESS RAY_AUTH_TOKEN
export RAY_AUTH_MODE=token
# Ray >= 2.60 drains a node for up to 30 s on SIGTERM (for Serve); the job tears down the whole
# cluster at once, so the drain would only wait on a GCS that is already gone.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
# The tag in Ray's environment marks this job's Ray processes on this node for --cleanup.
DQLRAY_RAY_TAG=$tag ray start "${args[@]}" &
rc=0
wait $! || rc=$?
if [[ -e $tmp.stop ]]; then   # stopped by the job's teardown: not an error
    rm -f "$tmp.stop"
    exit 0
fi
dqlray_err "Ray ${role#--} exited with code $rc while the job was running"
exit "$rc"
