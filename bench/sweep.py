"""The default sweep on these cores: wall time, trials finished, compute saved by ASHA, and ASHA's best vs the best
found when every trial runs its full budget.

    python -m bench.sweep [--num-samples 27] [--skip-compare]

1. `tune_main.py --num-samples 27` exactly as the README's main job runs it (Optuna + ASHA, configs/sweep.yaml).
2. The same sampled configurations twice with random search (seeded, so both see identical configurations): with ASHA
   and with every trial at full budget. Reported: wall times, episodes used, and the best validation Sharpe of each.
Goal (issue 4): the default 27-trial sweep completes in under 3 minutes on 2 cores.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(store: Path, name: str, *extra: str) -> tuple[float, list[dict], dict]:
    cmd = [sys.executable, str(ROOT / "tune_main.py"), "--experiment-name", name, "--storage-path", str(store),
           "--no-dashboard", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep {name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = list(csv.DictReader((store / name / "trials.csv").open()))
    summary = json.loads((store / name / "summary.json").read_text())
    return wall, rows, summary


def describe(rows: list[dict], max_t: int) -> tuple[int, float, float]:
    used = sum(int(r["episodes"]) for r in rows)
    best = max(float(r["val_sharpe"]) for r in rows if r["val_sharpe"])
    return used, 1 - used / (len(rows) * max_t), best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-samples", type=int, default=27)
    ap.add_argument("--skip-compare", action="store_true")
    args = ap.parse_args()
    import yaml

    max_t = yaml.safe_load((ROOT / "configs" / "sweep.yaml").read_text())["train"]["episodes"]
    store = Path(tempfile.mkdtemp(prefix="dqlray-bench-sweep-"))
    print(f"cores: {os.cpu_count()}, trials: {args.num_samples}, full budget: {max_t} episodes per trial")
    wall, rows, summary = run_sweep(store, "default", "--num-samples", str(args.num_samples))
    used, saved, best = describe(rows, max_t)
    print(f"\n{'sweep':<34}{'wall s':>8}{'trials':>8}{'episodes':>10}{'saved':>8}{'best val Sharpe':>17}")
    print(f"{'default (optuna + ASHA)':<34}{wall:>8.1f}{len(rows):>8}{used:>10}{saved:>8.0%}{best:>17.3f}")
    print(f"  stopped by ASHA: {summary['n_stopped_by_asha']}, test Sharpe of the winner "
          f"{summary['deflated_sharpe']['sharpe']:.2f}, DSR {summary['deflated_sharpe']['dsr']:.2f}")
    print(f"  goal < 180 s: {'met' if wall < 180 else 'NOT met'}")
    if args.skip_compare:
        return
    common = ("--search", "random", "--num-samples", str(args.num_samples), "--seed", "1")
    w_a, r_a, _ = run_sweep(store, "random_asha", *common)
    cfg = yaml.safe_load((ROOT / "configs" / "sweep.yaml").read_text())
    cfg["sweep"]["scheduler"] = "none"
    full_cfg = store / "sweep_full.yaml"
    full_cfg.write_text(yaml.safe_dump(cfg))
    w_f, r_f, _ = run_sweep(store, "random_full", *common, "--config", str(full_cfg))
    ua, sa, ba = describe(r_a, max_t)
    uf, sf, bf = describe(r_f, max_t)
    print(f"{'random, same configs, ASHA':<34}{w_a:>8.1f}{len(r_a):>8}{ua:>10}{sa:>8.0%}{ba:>17.3f}")
    print(f"{'random, same configs, full budget':<34}{w_f:>8.1f}{len(r_f):>8}{uf:>10}{sf:>8.0%}{bf:>17.3f}")
    print(f"\nASHA used {ua / uf:.0%} of the full-budget compute ({w_a / w_f:.0%} of its wall time); its best "
          f"validation Sharpe is {ba:.3f} against {bf:.3f} at full budget (difference {ba - bf:+.3f}).")


if __name__ == "__main__":
    main()
