#!/usr/bin/env bash
# One training run on one node: `python train_single.py "$@"` (no Ray cluster). See docs/slurm.md.
#
#   sbatch cluster/slurm_single.sh --config configs/my_run.yaml
#   sbatch --gres=gpu:1 --time=04:00:00 cluster/slurm_single.sh --config configs/my_run.yaml
#
# Defaults (edit here or override on the sbatch command line); run settings belong on the
# train_single.py command line. Same environment set-up as the sweep (cluster/common.sh):
# DQLRAY_VENV or DQLRAY_ENV_SETUP; notifications as configured for dqlray.notify (its 0600
# config file or TELEGRAM_* variables). DQLRAY_DRIVER overrides the entry point
# (default <repo>/train_single.py).
#SBATCH --job-name=dqlray-single
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --output=logs/%j.out
set -euo pipefail

# sbatch runs a spool copy of this script: find the repository through the job's Command.
if [[ -z ${DQLRAY_ROOT:-} ]]; then
    for cand in "$(scontrol show job -o "${SLURM_JOB_ID:-0}" 2>/dev/null | grep -o ' Command=[^ ]*' | cut -d= -f2-)" \
        "${BASH_SOURCE[0]}" "${SLURM_SUBMIT_DIR:-.}/cluster/slurm_single.sh"; do
        dir=$(cd "$(dirname "$cand")/.." 2>/dev/null && pwd) && [[ -f $dir/cluster/common.sh ]] &&
            DQLRAY_ROOT=$dir && break
    done
fi
[[ -n ${DQLRAY_ROOT:-} ]] || { echo "dqlray: ERROR: cannot find the repository; set DQLRAY_ROOT" >&2; exit 1; }
export DQLRAY_ROOT
# shellcheck source=cluster/common.sh
source "$DQLRAY_ROOT/cluster/common.sh"
dqlray_activate
dqlray_log "job ${SLURM_JOB_ID:-none} on $DQLRAY_NODE: $(dqlray_cpus) CPUs, $(dqlray_gpus) GPUs"
exec python "${DQLRAY_DRIVER:-$DQLRAY_ROOT/train_single.py}" "$@"
