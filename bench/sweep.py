"""Sweeps on these cores, packed (issue 14) against one configuration per trial (``--pack 1``).

    python -m bench.sweep [--num-samples 27] [--large-configs 64] [--large-episodes 100] [--skip-large]
                          [--large-full-one] [--skip-optuna] [--skip-small] [--json out.json]

Every sweep is ``tune_main.py`` as a user runs it (configs/sweep.yaml, data/test_small.csv), in a subprocess:

1. random search, seeded, with ASHA: the same ``--num-samples`` configurations (Optuna's ``RandomSampler`` draws
   them in the same order whatever the pack size), ``--pack auto`` against ``--pack 1``;
2. the same configurations at full budget (``scheduler: none``), both ways: the winner must be the same;
3. the default sweep (Optuna's TPE + ASHA), both ways (TPE adapts to results, so the configurations differ);
4. a larger sweep: ``--large-configs`` random configurations with a budget of ``--large-episodes`` episodes and
   ASHA, both ways; then the same configurations at full budget, packed (what packs give when no scheduler thins
   them: a user's random or grid search over many configurations), and with ``--large-full-one`` also with
   ``--pack 1`` (9 to 10 minutes more on 2 cores: left out by default so that the benchmark stays near 15 minutes);
5. random search with ASHA over a space of small networks (widths 16 or 32, batches 32 or 64; the direction the
   learning-power issue takes), both ways: what packing gives when the update is not compute-bound.

A small sweep runs first, unmeasured, so that the first measured one does not pay for a cold file cache (Python,
torch and Ray read from disk). For each: wall time of the whole command (Ray start-up, the test evaluation and the
report included); the trial phase (first trial start to last trial end, from the trials' own clocks); cores busy
(the packs' CPU seconds over wall time x cores, and over the trial phase x cores); agent-steps (env steps x seeds,
summed over configurations) per core-second of wall time; episodes used; the best validation Sharpe among the
configurations that reached the full budget (the winner's); the winner; and the largest peak RSS of a trial's worker
process. Timings on a shared machine are noisy: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "configs" / "sweep.yaml"
ISSUE_STEPS_PER_CORE_S = 1_900
"""Issue 14's "today" (``main`` before packs): the default sweep's agent-steps per core-second; its goal is 5x."""


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_sweep(store: Path, name: str, config: Path, *extra: str) -> dict[str, Any]:
    """Run one sweep to completion; return its figures."""
    cmd = [sys.executable, str(ROOT / "tune_main.py"), "--config", str(config), "--experiment-name", name,
           "--storage-path", str(store), "--no-dashboard", *extra]
    t0, u0 = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall, u1 = time.perf_counter() - t0, time.time()
    if proc.returncode != 0:
        sys.exit(f"sweep {name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    exp = store / name
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    summary = json.loads((exp / "summary.json").read_text())
    meta = json.loads((exp / "sweep_meta.json").read_text())
    seeds = int(meta["base_config"]["train"]["num_seeds"])
    starts, ends, cpu, rss = [], [], 0.0, 0.0
    for f in exp.glob("trial_*/result.json"):
        res = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if not res:
            continue
        starts.append(res[0]["unix_time"] - res[0]["time_this_iter_s"])
        ends.append(res[-1]["unix_time"])
        # a pack retried after a crash starts its CPU clock again: add each run's last reading
        cpu += sum(a["cpu_s"] for a, b in zip(res, res[1:] + [None], strict=True) if b is None or b["cpu_s"] < a["cpu_s"])
        rss = max(rss, max(r["rss_peak_mb"] for r in res))
    phase = max(ends) - min(starts)
    cores = os.cpu_count() or 1
    steps = sum(int(float(r["env_steps"] or 0)) for r in rows) * seeds
    full = [r for r in rows if r["full_budget"] == "True"]
    return {"name": name, "wall_s": wall, "trial_phase_s": phase, "cpu_s": cpu,
            "before_s": min(starts) - u0, "after_s": u1 - max(ends),
            "busy_wall": cpu / (wall * cores), "busy_phase": cpu / (phase * cores),
            "agent_steps": steps, "steps_per_core_s": steps / (wall * cores),
            "episodes": sum(int(float(r["episodes"] or 0)) for r in rows), "configs": len(rows),
            "packs": summary["n_packs"], "pack_size": meta.get("pack_size"), "full_budget": len(full),
            "best_val_sharpe": summary["best_val"]["val_sharpe"], "winner": summary["best_trial"],
            "winner_params": summary["best_params"], "rss_peak_mb": rss}


def sweep_file(store: Path, name: str, **changes: Any) -> Path:
    """configs/sweep.yaml with ``{section: {field: value}}`` changes."""
    cfg = yaml.safe_load(SWEEP_FILE.read_text())
    for sec, fields in changes.items():
        cfg.setdefault(sec, {}).update(fields)
    cfg["data"]["data_file"] = str(ROOT / cfg["data"]["data_file"])
    p = store / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


HEADER = (f"{'sweep':<34}{'pack':>6}{'packs':>6}{'wall s':>8}{'trials s':>9}{'busy':>6}{'busy*':>6}"
          f"{'steps/core-s':>13}{'episodes':>9}{'full':>5}{'best val':>9}{'winner':>7}{'RSS MB':>8}")


def line(label: str, r: dict[str, Any]) -> str:
    return (f"{label:<34}{str(r['pack_size']):>6}{r['packs']:>6}{r['wall_s']:>8.1f}{r['trial_phase_s']:>9.1f}"
            f"{r['busy_wall']:>6.0%}{r['busy_phase']:>6.0%}{r['steps_per_core_s']:>13,.0f}{r['episodes']:>9}"
            f"{r['full_budget']:>5}{r['best_val_sharpe']:>9.3f}{r['winner']:>7}{r['rss_peak_mb']:>8.0f}")


def compare(label: str, packed: dict[str, Any], one: dict[str, Any]) -> list[str]:
    out = [line(label, packed), line("", one)]
    out.append(f"{'':<34}packed/--pack 1: trial phase {packed['trial_phase_s'] / one['trial_phase_s']:.2f}x, wall "
               f"{packed['wall_s'] / one['wall_s']:.2f}x, agent-steps per core-second "
               f"{packed['steps_per_core_s'] / one['steps_per_core_s']:.1f}x; before the first trial "
               f"{packed['before_s']:.1f} / {one['before_s']:.1f} s, after the last {packed['after_s']:.1f} / "
               f"{one['after_s']:.1f} s")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=27)
    ap.add_argument("--large-configs", type=int, default=64)
    ap.add_argument("--large-episodes", type=int, default=100)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--skip-optuna", action="store_true")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--large-full-one", action="store_true",
                    help="also run the larger full-budget sweep with --pack 1 (about 9 minutes on 2 cores)")
    ap.add_argument("--json", default=None, help="write every sweep's figures here")
    args = ap.parse_args(argv)
    base = yaml.safe_load(SWEEP_FILE.read_text())
    store = Path(tempfile.mkdtemp(prefix="dqlray-bench-sweep-"))
    n = str(args.num_samples)
    print(f"cores: {os.cpu_count()}, configurations: {n}, budget: {base['train']['episodes']} episodes x "
          f"{base['env']['episode_length']} steps x {base['train']['num_seeds']} seeds; {load()}")
    t0 = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    default = sweep_file(store, "default")
    full = sweep_file(store, "full", sweep={"scheduler": "none"})
    plan = [("random_asha", default, ("--search", "random", "--seed", "1", "--num-samples", n)),
            ("random_full", full, ("--search", "random", "--seed", "1", "--num-samples", n))]
    if not args.skip_optuna:
        plan.append(("optuna_asha", default, ("--num-samples", n)))
    if not args.skip_small:
        small = sweep_file(store, "small", search={"agent.hidden": {"choice": [[16, 16], [32, 32]]},
                                                   "agent.batch_size": {"choice": [32, 64]}})
        plan.append(("small_asha", small, ("--search", "random", "--seed", "1", "--num-samples", n)))
    if not args.skip_large:
        large = sweep_file(store, "large", train={"episodes": args.large_episodes})
        large_full = sweep_file(store, "large_full", train={"episodes": args.large_episodes},
                                sweep={"scheduler": "none"})
        for name, cfg in (("large_asha", large), ("large_full", large_full)):
            plan.append((name, cfg, ("--search", "random", "--seed", "2", "--num-samples", str(args.large_configs))))
    run_sweep(store, "warm_up", default, "--search", "random", "--seed", "1", "--num-samples", "2")
    print(f"  warm-up sweep done; {load()}", flush=True)
    for name, cfg, extra in plan:
        # the packed sweep first: the machine's load drifts, so alternate order per pair
        for pack in (("auto",) if name == "large_full" and not args.large_full_one else ("auto", "1")):
            tag = f"{name}_{'packed' if pack == 'auto' else 'one'}"
            runs[tag] = run_sweep(store, tag, cfg, *extra, "--pack", pack)
            print(f"  {tag}: {runs[tag]['wall_s']:.1f} s; {load()}", flush=True)
    print(f"\n{HEADER}\n{'-' * len(HEADER)}")
    labels = {"random_asha": "random + ASHA, same configs", "random_full": "random, full budget, same configs",
              "optuna_asha": "default (Optuna TPE + ASHA)", "small_asha": "random + ASHA, small networks",
              "large_asha": f"random + ASHA, {args.large_configs} x {args.large_episodes} ep",
              "large_full": f"random, full budget, {args.large_configs} x {args.large_episodes} ep"}
    for name, _, _ in plan:
        if f"{name}_one" not in runs:
            print(line(labels[name], runs[f"{name}_packed"]) + "   (--pack 1: with --large-full-one)")
            continue
        for text in compare(labels[name], runs[f"{name}_packed"], runs[f"{name}_one"]):
            print(text)
    print("\npack: configurations per pack (auto resolved); busy: the packs' CPU seconds / (wall x cores); busy*: the "
          "same over the trial phase; full: configurations that ran the full budget; best val: the winner's "
          "validation Sharpe (the best at full budget); RSS MB: the largest peak RSS of a trial's worker process.")
    rf = (runs["random_full_packed"], runs["random_full_one"])
    same = rf[0]["winner"] == rf[1]["winner"] and rf[0]["winner_params"] == rf[1]["winner_params"]
    print(f"\nSame winner packed and --pack 1 (random search, full budget): {'yes' if same else 'NO'} "
          f"({rf[0]['winner']} vs {rf[1]['winner']})")
    ra = (runs["random_asha_packed"], runs["random_asha_one"])
    phase, wall = ra[0]["trial_phase_s"] / ra[1]["trial_phase_s"], ra[0]["wall_s"] / ra[1]["wall_s"]
    print(f"Goals (issue 14), random + ASHA on the same configurations: trial phase packed <= 1/3 of --pack 1: "
          f"{phase:.2f} ({'met' if phase <= 1 / 3 else 'NOT met'}); wall <= 1/2: {wall:.2f} "
          f"({'met' if wall <= 0.5 else 'NOT met'})")
    fixed, half = ra[0]["before_s"] + ra[0]["after_s"], ra[1]["wall_s"] / 2
    need = (f"a trial phase under {half - fixed:.1f} s" if fixed < half
            else "less fixed cost than that, whatever the trial phase")
    print(f"  what bounds the wall: the packed sweep's time outside its trials (before the first, after the last) was "
          f"{fixed:.1f} s, against half of --pack 1's wall, {half:.1f} s: a wall of half needs {need}")
    for name in ("large_asha", "large_full"):
        if f"{name}_packed" not in runs:
            continue
        lg = runs[f"{name}_packed"]
        gain = lg["steps_per_core_s"] / ISSUE_STEPS_PER_CORE_S
        print(f"Larger sweep, {labels[name]}, packed: cores busy {lg['busy_wall']:.1%} of wall "
              f"({lg['busy_phase']:.0%} of the trial phase; goal >= 80%: {'met' if lg['busy_wall'] >= 0.8 else 'NOT met'}), "
              f"{lg['steps_per_core_s']:,.0f} agent-steps per core-second = {gain:.1f}x the issue's "
              f"{ISSUE_STEPS_PER_CORE_S:,} (goal >= 5x: {'met' if gain >= 5 else 'NOT met'})")
    print(f"\nbench.sweep took {time.perf_counter() - t0:.0f} s; {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
