"""Calibration of the verdict (issue 11): how often does it claim skill where there is none, and how often does it
find an edge that is there?

    python -m bench.verdict                   # 40 null markets, 40 + 40 probe markets, 10 agent markets (~45 min)
    python -m bench.verdict --quick           # 4 null markets, 8 + 8 probe markets, 2 agent markets (~6 min)
    python -m bench.verdict --render FILE     # print a saved run's table again

- **Null markets**: the real S&P 500 daily bars bundled with ``arch`` (1999-2018, 5,031 bars) with their days in a
  random order (:func:`dqlray.data.shuffle_days`, seeds 1000, 1001, ...): fat tails and drift stay, every serial
  dependence goes, so no policy's timing can have an edge. On each, the default sweep (``tune_main.py`` with
  ``configs/sweep.yaml``: Optuna + ASHA over the default space, made small to fit the time: ``--num-samples``
  trials of ``--episodes`` episodes) runs for real, and its ``summary.json`` verdict is counted: how often
  ``p_benchmark`` and ``p_random`` are at or below the level (each test's size) and how often ``beats_benchmark``
  is true. The linear probe's test returns on the same markets get the verdict too (a second, training-free policy).
- **Planted-signal markets** (:mod:`dqlray.planted`, the one-bar ``linear`` edge, ``--bars`` bars, generator seeds
  2000, 2001, ...): the verdict on the linear probe's test returns at two strengths (the default 0.16 and twice it),
  which is the verdict's own power, apart from any agent's learning; and on the default sweep's winner at the
  stronger strength, the power a user gets today (it also needs an agent that learns the edge: issue 12).

Every sweep joins the benchmark's one Ray cluster (``--address``); ``--parallel`` sweeps run at once, each with one
trial at a time. Goals: on at least 40 null markets each test rejects at most 4 times; power at least 80% for the
linear probe on the stronger planted signal; a default run under 45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "configs" / "sweep.yaml"
NULL_SEED0, PLANTED_SEED0 = 1000, 2000
MAX_NULL_REJECTIONS = 4  # of 40: the goal's size, about 5% (issue 11)
POWER_GOAL = 0.8


def probe_verdict(data: Any, base: Any) -> dict[str, Any]:
    """The verdict (checks 1 and 2) of the linear probe's test returns on ``data`` against the benchmark."""
    from dqlray.baselines import make_baselines
    from dqlray.evaluation import evaluate_policy
    from dqlray.parts import build_market
    from dqlray.record import record_of
    from dqlray.verdict import record_verdict

    market = build_market(base, data)
    pols = make_baselines(market, base.env)
    kw = dict(part="test", env=base.env, periods=base.train.periods_per_year)
    results = {"agent": evaluate_policy(pols["linear_probe"], market, name="agent", **kw)}
    results[base.verdict.benchmark] = evaluate_policy(pols[base.verdict.benchmark], market,
                                                      name=base.verdict.benchmark, **kw)
    rec = record_of(results, market, base.env.cost_rate)
    return record_verdict(rec, base.verdict, periods=base.train.periods_per_year).to_dict()


def run_sweep(data_file: Path, name: str, store: Path, address: str, args: argparse.Namespace) -> dict[str, Any]:
    """``tune_main.py`` (defaults, made small) on one market, joined to the benchmark's Ray; its summary's verdict."""
    cmd = [sys.executable, str(ROOT / "tune_main.py"), "--config", str(args.config), "--data-file", str(data_file),
           "--experiment-name", name, "--storage-path", str(store), "--address", address, "--no-dashboard",
           "--num-samples", str(args.num_samples), "--episodes", str(args.episodes), "--max-concurrent", "1"]
    t0 = time.perf_counter()
    log = store / f"{name}.log"
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sweep {name} failed with exit code {proc.returncode}; log {log}:\n"
                           f"{log.read_text()[-3000:]}")
    s = json.loads((store / name / "summary.json").read_text())
    return {"wall_s": time.perf_counter() - t0, "verdict": s["verdict"], "best_params": s["best_params"],
            "test_sharpe": s["test"]["agent"]["summary"]["sharpe"]["mean"],
            "bh_sharpe": s["test"]["baselines"]["buy_and_hold"]["sharpe"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.verdict", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 null markets, 8 probe markets per strength, 2 agent ones")
    ap.add_argument("--nulls", type=int, default=None, help="null markets, each with a sweep (default 40)")
    ap.add_argument("--probe-markets", type=int, default=None, help="planted markets per strength for the probe (40)")
    ap.add_argument("--agent-markets", type=int, default=None, help="planted markets with a sweep (default 10)")
    ap.add_argument("--strength", type=float, default=None, help="the weaker planted strength (default 0.16; the "
                    "stronger is twice it)")
    ap.add_argument("--bars", type=int, default=5000, help="bars of each planted market")
    ap.add_argument("--num-samples", type=int, default=6, help="trials of each sweep (default 6)")
    ap.add_argument("--episodes", type=int, default=12, help="full budget of each trial in episodes (default 12)")
    ap.add_argument("--parallel", type=int, default=None, help="sweeps at once (default: the cores)")
    ap.add_argument("--config", default=str(SWEEP_FILE), help="sweep file (base config, space, settings)")
    ap.add_argument("--json", default=None, help="write every figure here (default: in the work folder)")
    ap.add_argument("--render", default=None, metavar="JSON", help="print an earlier run's table again")
    args = ap.parse_args(argv)
    if args.render:
        _render(json.loads(Path(args.render).read_text()))
        return 0
    args.nulls = args.nulls if args.nulls is not None else 4 if args.quick else 40
    args.probe_markets = args.probe_markets if args.probe_markets is not None else 8 if args.quick else 40
    args.agent_markets = args.agent_markets if args.agent_markets is not None else 2 if args.quick else 10
    args.parallel = args.parallel or os.cpu_count() or 1

    import ray

    from dqlray.data import load_ohlcv, save_ohlcv, shuffle_days, sp500
    from dqlray.planted import DEFAULT_STRENGTH, Edge, planted_market
    from dqlray.tuning.space import parse_sweep_file

    weak = args.strength if args.strength is not None else DEFAULT_STRENGTH["linear"]
    strengths = (weak, 2 * weak)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="dqlray-bench-verdict-"))
    sf = parse_sweep_file(args.config)
    base = sf.base
    print(f"bench.verdict: {args.nulls} null markets (S&P 500 days shuffled), {args.probe_markets} planted linear "
          f"markets per strength {strengths[0]:g} and {strengths[1]:g} for the probe, {args.agent_markets} at "
          f"{strengths[1]:g} for the agent; sweeps of {args.num_samples} trials x {args.episodes} episodes, "
          f"{args.parallel} at once; level {base.verdict.level}; {os.cpu_count()} cores, load {load0[0]:.1f}; "
          f"work folder {work}", flush=True)

    real = sp500()
    markets: dict[str, dict[str, Any]] = {}
    for i in range(args.nulls):
        markets[f"null/{i}"] = {"kind": "null", "seed": NULL_SEED0 + i, "sweep": True,
                                "data": shuffle_days(real, seed=NULL_SEED0 + i)}
    for s in strengths:
        for i in range(max(args.probe_markets, args.agent_markets if s == strengths[1] else 0)):
            markets[f"linear{s:g}/{i}"] = {
                "kind": "planted", "strength": s, "seed": PLANTED_SEED0 + i,
                "sweep": s == strengths[1] and i < args.agent_markets, "probe": i < args.probe_markets,
                "data": planted_market(args.bars, Edge(kind="linear", strength=s), seed=PLANTED_SEED0 + i)}
    results: dict[str, dict[str, Any]] = {}
    for name, m in markets.items():
        path = work / f"{name.replace('/', '_')}.csv"
        save_ohlcv(m["data"], path)
        data = load_ohlcv(path)  # everything reads the file the sweep reads
        m["file"] = path
        results[name] = {k: v for k, v in m.items() if k not in ("data", "file")}
        if m.get("probe", True):
            results[name]["probe"] = probe_verdict(data, base.replace({"data": {"data_file": str(path)}}))
    print(f"  probe verdicts: {sum('probe' in r for r in results.values())} markets "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        address = ray.get_runtime_context().gcs_address
        jobs = [n for n, m in markets.items() if m["sweep"]]
        store = work / "sweeps"
        store.mkdir()
        t_sweeps = time.perf_counter()

        def one(name: str) -> tuple[str, dict[str, Any]]:
            return name, run_sweep(markets[name]["file"], name.replace("/", "_").replace(".", "p"), store, address,
                                   args)

        with ThreadPoolExecutor(args.parallel) as pool:
            for k, (name, res) in enumerate(pool.map(one, jobs), start=1):
                results[name]["agent"] = res
                v = res["verdict"]
                print(f"  sweep {k}/{len(jobs)} {name:<14} {res['wall_s']:5.0f} s  p_benchmark {v['p_benchmark']:.3f}"
                      f"  p_random {v['p_random']:.3f}  beats {v['beats_benchmark']}  "
                      f"({time.perf_counter() - t_sweeps:.0f} s)", flush=True)
    finally:
        ray.shutdown()
    load1 = os.getloadavg()
    out = {"args": {k: v for k, v in vars(args).items()}, "strengths": strengths, "level": base.verdict.level,
           "wall_s": time.perf_counter() - t_start, "cores": os.cpu_count(), "load_start": load0, "load_end": load1,
           "markets": results}
    path = Path(args.json) if args.json else work / "verdict.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    _render(out)
    print(f"figures: {path}")
    return 0


def _count(rows: list[dict[str, Any]], key: str, level: float) -> int:
    if key == "beats_benchmark":
        return sum(bool(r[key]) for r in rows)
    return sum(r[key] <= level for r in rows)


def _render(out: dict[str, Any]) -> None:
    level = out["level"]
    weak, strong = out["strengths"]
    ms = out["markets"]

    def rows(kind: str, who: str, strength: float | None = None) -> list[dict[str, Any]]:
        return [m[who]["verdict"] if who == "agent" else m[who] for m in ms.values()
                if m["kind"] == kind and who in m and (strength is None or m.get("strength") == strength)]

    lines = [("null markets: the default sweep's winner", rows("null", "agent")),
             ("null markets: the linear probe", rows("null", "probe")),
             (f"planted linear {weak:g}: the linear probe", rows("planted", "probe", weak)),
             (f"planted linear {strong:g}: the linear probe", rows("planted", "probe", strong)),
             (f"planted linear {strong:g}: the default sweep's winner", rows("planted", "agent", strong))]
    print(f"\nVerdict calibration at level {level:g} (counts of markets; a null market has no edge, so every claim "
          "there is false)")
    head = f"{'markets':<52}{'n':>4}{'p_benchmark <= level':>22}{'p_random <= level':>20}{'beats_benchmark':>18}"
    print(head)
    print("-" * len(head))
    for label, rs in lines:
        if not rs:
            continue
        n = len(rs)
        cells = [f"{c} ({c / n:.0%})" for c in (_count(rs, k, level) for k in ("p_benchmark", "p_random",
                                                                              "beats_benchmark"))]
        print(f"{label:<52}{n:>4}{cells[0]:>22}{cells[1]:>20}{cells[2]:>18}")
    null_agent = rows("null", "agent")
    probe_strong = rows("planted", "probe", strong)
    print("\nGoals (issue 11)")
    if null_agent:
        n = len(null_agent)
        worst = max(_count(null_agent, k, level) for k in ("p_benchmark", "p_random", "beats_benchmark"))
        allowed = MAX_NULL_REJECTIONS * n / 40
        state = "NOT met" if worst > allowed else "met" if n >= 40 else "met so far (fewer than 40 markets)"
        print(f"  null markets ({n}): each test rejects at most {MAX_NULL_REJECTIONS} of 40 (here {allowed:g}): "
              f"most rejections {worst}: {state}")
    if probe_strong:
        power = _count(probe_strong, "beats_benchmark", level) / len(probe_strong)
        print(f"  power of the verdict on the linear probe at strength {strong:g}: {power:.0%} (goal "
              f"{POWER_GOAL:.0%}): {'met' if power >= POWER_GOAL else 'NOT met'}")
    agent = [m["agent"] for m in ms.values() if m["kind"] == "planted" and "agent" in m]
    if agent:
        print(f"  the default sweep's winner on the planted markets: mean test Sharpe "
              f"{sum(a['test_sharpe'] for a in agent) / len(agent):+.2f} (buy-and-hold "
              f"{sum(a['bh_sharpe'] for a in agent) / len(agent):+.2f})")
    sweeps = [m["agent"]["wall_s"] for m in ms.values() if "agent" in m]
    print(f"\nwall time {out['wall_s']:.0f} s ({out['wall_s'] / 60:.1f} min) on {out['cores']} cores, "
          f"{len(sweeps)} sweeps ({sum(sweeps) / max(len(sweeps), 1):.0f} s each, run {out['args']['parallel']} at "
          f"once); load average at start {out['load_start'][0]:.1f}, at end {out['load_end'][0]:.1f} (1 min), "
          f"{out['load_end'][2]:.1f} (15 min)")
    print(f"  time goal: under 45 minutes on 2 cores with the defaults: "
          f"{'met' if out['wall_s'] < 45 * 60 else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
