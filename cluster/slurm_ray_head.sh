#!/usr/bin/env bash
# shellcheck disable=SC2317  # teardown and on_signal run from traps
# A Ray Tune sweep on a SLURM allocation: a Ray head on the first node, a Ray worker on every
# other node (cluster/slurm_ray_workers.sh via srun), then `python tune_main.py --address HEAD
# "$@"`, then teardown of this job's Ray only. See docs/slurm.md.
#
#   sbatch cluster/slurm_ray_head.sh --num-samples 27 --config configs/sweep.yaml
#   sbatch --nodes=4 --cpus-per-task=16 --gres=gpu:2 cluster/slurm_ray_head.sh --num-samples 64
#
# Defaults (edit here or override on the sbatch command line; one task per node, Ray schedules
# the trials inside it). Sweep settings belong on the tune_main.py command line, not here.
#SBATCH --job-name=dqlray-tune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --output=logs/%j.out
#
# Environment (export before sbatch): see cluster/common.sh, plus
#   DQLRAY_DRIVER          Python entry point (default <repo>/tune_main.py)
#   DQLRAY_TOKEN_DIR       shared directory for the per-job Ray token (default ~/.dqlray/tokens)
#   DQLRAY_LOGIN_HOST      host named in the printed ssh tunnel line (default: the submit host)
#   DQLRAY_MAX_RESUBMITS   how often a sweep stopped by the time limit resubmits itself (default 3)
#   DQLRAY_RAY_START_ARGS  extra `ray start` arguments for every node
# Exit code: the driver's (0 done, 75 stopped with its state saved, ...); 0 after a resubmission;
# 1 when the Ray cluster did not come up.
set -euo pipefail

# sbatch runs a spool copy of this script: find the repository through the job's Command.
if [[ -z ${DQLRAY_ROOT:-} ]]; then
    for cand in "$(scontrol show job -o "${SLURM_JOB_ID:-0}" 2>/dev/null | grep -o ' Command=[^ ]*' | cut -d= -f2-)" \
        "${BASH_SOURCE[0]}" "${SLURM_SUBMIT_DIR:-.}/cluster/slurm_ray_head.sh"; do
        dir=$(cd "$(dirname "$cand")/.." 2>/dev/null && pwd) && [[ -f $dir/cluster/common.sh ]] &&
            DQLRAY_ROOT=$dir && break
    done
fi
[[ -n ${DQLRAY_ROOT:-} ]] || { echo "dqlray: ERROR: cannot find the repository; set DQLRAY_ROOT" >&2; exit 1; }
export DQLRAY_ROOT
# shellcheck source=cluster/common.sh
source "$DQLRAY_ROOT/cluster/common.sh"
[[ -n ${SLURM_JOB_ID:-} ]] || dqlray_die "submit this script with sbatch (see docs/slurm.md)"
dqlray_activate

job=$SLURM_JOB_ID
script=$DQLRAY_ROOT/cluster/slurm_ray_head.sh
resubmits=${DQLRAY_RESUBMIT_COUNT:-0}
max_resubmits=${DQLRAY_MAX_RESUBMITS:-3}
driver=${DQLRAY_DRIVER:-$DQLRAY_ROOT/tune_main.py}
args=("$@")
has_arg() {  # has_arg --some-flag: also --some_flag, --some-flag=VALUE
    local a want=${1//_/-}
    for a in "${args[@]}"; do
        a=${a%%=*}
        [[ ${a//_/-} == "$want" ]] && return 0
    done
    return 1
}
# One experiment per job (tune_main.py refuses to start over an existing one), and a name the
# follow-up job can resume. The tasks of an array share one (the array's job id).
has_arg --experiment-name || args+=(--experiment-name "${SLURM_JOB_NAME:-dqlray}-${SLURM_ARRAY_JOB_ID:-$job}")
# An array of walk-forward folds (sbatch --array=0-2 ... --walk-forward 3): each task runs the fold
# of its index; a final --resume stitches them (docs/slurm.md).
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]] && has_arg --walk-forward && ! has_arg --fold; then
    args+=(--fold "$SLURM_ARRAY_TASK_ID")
fi

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
[[ $head_node == "$DQLRAY_NODE" ]] || dqlray_die "this batch script runs on $DQLRAY_NODE, not on" \
    "the allocation's first node $head_node"
head_ip=${DQLRAY_HEAD_IP:-$(dqlray_node_addr "$head_node")}
cpus=$(dqlray_cpus)
gpus=$(dqlray_gpus)
dqlray_ports ""   # probe a free block on this (the head) node
dqlray_tmpdir >/dev/null   # fails now if the socket paths would be too long
((resubmits == 0)) || dqlray_log "resuming: resubmission $resubmits of at most $max_resubmits"

# One token per job, in a 0600 file on the shared filesystem; its path goes to every node and the
# driver, the token itself is never printed.
token_dir=${DQLRAY_TOKEN_DIR:-$HOME/.dqlray/tokens}
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$token_dir/${SLURM_CLUSTER_NAME:-slurm}-$job.token
unset RAY_AUTH_TOKEN RAY_ADDRESS
python "$DQLRAY_ROOT/cluster/ray_cluster.py" token "$RAY_AUTH_TOKEN_PATH"

step_pids=()
driver_pid=
got_usr1=0

teardown() {
    local rc=$? cleanup_rc=0 pid
    trap '' USR1 TERM
    if [[ -n $driver_pid ]] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null || true
    fi
    if ((${#step_pids[@]})); then
        dqlray_log "stopping this job's Ray on ${nodes[*]}"
        timeout 120 srun --overlap --nodes="${#nodes[@]}" --ntasks="${#nodes[@]}" --ntasks-per-node=1 \
            --cpus-per-task=1 -w "$SLURM_JOB_NODELIST" --job-name=ray-cleanup \
            "$DQLRAY_ROOT/cluster/slurm_ray_workers.sh" --cleanup || cleanup_rc=$?
        if ((cleanup_rc)); then   # e.g. after scancel no new step starts; SLURM kills the steps then
            SLURMD_NODENAME=$head_node "$DQLRAY_ROOT/cluster/slurm_ray_workers.sh" --cleanup && cleanup_rc=0
        fi
        for _ in $(seq 50); do   # the start steps end with their Ray
            for pid in "${step_pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; pid=; done
            [[ -z $pid ]] && break
            sleep 0.2
        done
        for pid in "${step_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        ((cleanup_rc == 0)) || dqlray_err "Ray cleanup failed on some node (exit $cleanup_rc), see above"
    fi
    rm -f "$RAY_AUTH_TOKEN_PATH"
    exit "$rc"
}
on_signal() {
    [[ $1 == USR1 ]] && got_usr1=1
    if [[ -z $driver_pid ]]; then
        dqlray_log "SIG$1 before the sweep started: stopping"
        exit $((128 + $(kill -l "$1")))
    fi
    dqlray_log "SIG$1: asking the sweep to save its state and stop"
    kill -USR1 "$driver_pid" 2>/dev/null || true
}
trap teardown EXIT
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

srun_node() {  # srun_node NODE ARGS...: one task on NODE, with all of this job's CPUs there
    local node=$1
    shift
    local gres=()
    ((gpus == 0)) || gres=(--gres="gpu:$gpus")
    srun --overlap --nodes=1 --ntasks=1 --cpus-per-task="$cpus" "${gres[@]}" -w "$node" \
        --job-name="ray-$node" "$@" &
}
srun_node "$head_node" "$DQLRAY_ROOT/cluster/slurm_ray_workers.sh" --head "$head_ip" "$DQLRAY_PORTS_BASE"
step_pids+=($!)
watch=(--watch "$head_node=$!")
for node in "${nodes[@]:1}"; do
    srun_node "$node" "$DQLRAY_ROOT/cluster/slurm_ray_workers.sh" --worker "$head_ip:$DQLRAY_PORT_GCS"
    step_pids+=($!)
    watch+=(--watch "$node=$!")
done

dqlray_log "waiting for Ray on ${#nodes[@]} nodes (${cpus} CPUs and ${gpus} GPUs each)"
python "$DQLRAY_ROOT/cluster/ray_cluster.py" wait --address "$head_ip:$DQLRAY_PORT_GCS" \
    --nodes "${#nodes[@]}" --cpus $((cpus * ${#nodes[@]})) --gpus $((gpus * ${#nodes[@]})) \
    --timeout "${DQLRAY_START_TIMEOUT:-300}" "${watch[@]}" ||
    dqlray_die "the Ray cluster of job $job did not come up (see above)"

dqlray_log "dashboard: ssh -N -L 8265:$head_ip:$DQLRAY_PORT_DASHBOARD ${DQLRAY_LOGIN_HOST:-${SLURM_SUBMIT_HOST:-LOGIN-HOST}}" \
    "then open http://localhost:8265"
dqlray_log "dashboard token: in $RAY_AUTH_TOKEN_PATH (0600, deleted when the job ends)"
dqlray_log "running: python $driver --address $head_ip:$DQLRAY_PORT_GCS ${args[*]}"
(exec python "$driver" --address "$head_ip:$DQLRAY_PORT_GCS" "${args[@]}") &
driver_pid=$!
rc=0
wait "$driver_pid" || rc=$?
while kill -0 "$driver_pid" 2>/dev/null; do  # a trapped signal interrupted `wait`
    rc=0
    wait "$driver_pid" || rc=$?
done
dqlray_log "the sweep exited with code $rc"

# Stopped by the time-limit signal with its state saved: a follow-up job resumes the experiment.
resubmit() {
    local info opts=() new_args=("${args[@]}") clean_env=() v val out
    if ((resubmits >= max_resubmits)); then
        dqlray_err "not resubmitting: this sweep was resubmitted $resubmits times already" \
            "(DQLRAY_MAX_RESUBMITS=$max_resubmits); resume it with: $resume_cmd"
        return 1
    fi
    info=$(scontrol show job -o "$job")
    field() { grep -o " $1=[^ ]*" <<<"$info" | head -1 | cut -d= -f2-; }
    # The resources this job had, whether from the #SBATCH lines or the sbatch command line.
    opts=(--parsable --dependency="afterany:$job" --nodes="$(field NumNodes)" --ntasks-per-node=1
        --cpus-per-task="$(field CPUs/Task)" --job-name="$(field JobName)" --chdir="$(field WorkDir)"
        --partition="$(field Partition)")
    val=$(field TimeLimit) && [[ $val != UNLIMITED ]] && opts+=(--time="$val")
    val=$(field MinMemoryNode) && [[ -n $val ]] && opts+=(--mem="$val")
    val=$(field MinMemoryCPU) && [[ -n $val ]] && opts+=(--mem-per-cpu="$val")
    val=$(field Account) && [[ $val != "(null)" && -n $val ]] && opts+=(--account="$val")
    val=$(field QOS) && [[ $val != "(null)" && -n $val ]] && opts+=(--qos="$val")
    val=$(field Features) && [[ $val != "(null)" && -n $val ]] && opts+=(--constraint="$val")
    val=$(field TresPerNode) && [[ $val == gres:* ]] && opts+=(--gres="${val#gres:}")
    for v in StdOut StdErr; do  # logs/123.out -> logs/%j.out
        val=$(field "$v")
        [[ -n $val && ($v == StdOut || $val != "$(field StdOut)") ]] || continue
        out=$(basename "$val")
        out=$(dirname "$val")/${out//$job/%j}
        if [[ $v == StdOut ]]; then opts+=(--output="$out"); else opts+=(--error="$out"); fi
    done
    has_arg --resume || new_args+=(--resume)
    for v in $(compgen -e); do  # this job's SLURM variables and token must not leak into the next
        case $v in SLURM_CONF) ;; SLURM_* | RAY_AUTH_*) clean_env+=(-u "$v") ;; esac
    done
    local next
    next=$(env "${clean_env[@]}" DQLRAY_RESUBMIT_COUNT=$((resubmits + 1)) \
        sbatch "${opts[@]}" "$script" "${new_args[@]}") || return 1
    dqlray_log "stopped before the time limit with its state saved; resubmitted as job $next" \
        "(resubmission $((resubmits + 1)) of at most $max_resubmits), which resumes it"
}
resume_cmd="sbatch cluster/slurm_ray_head.sh ${args[*]}"
has_arg --resume || resume_cmd+=" --resume"
if ((rc == 75 && got_usr1)); then
    resubmit && rc=0
elif ((rc == 75)); then
    dqlray_log "the sweep was stopped with its state saved; resume it with: $resume_cmd"
fi
exit "$rc"
