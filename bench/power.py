"""Learning power of the search space and quality of the default sweep, on markets with planted edges (issue 12).

    python -m bench.power [--quick] [--markets dev|report] [--json FILE]
    python -m bench.power --variants 'agent.gamma=0; agent.gamma=0,agent.hidden=[16]' [--quick]

For each market (dqlray/planted.py: linear one-bar, 20-bar trend and calm/turbulent interaction edges, several
generator seeds each, plus iid and shuffled-day null markets), on the test part at the sweep file's costs:

- the ceiling: the planted rule (the exact expected return, traded with the linear probe's cost rule);
- the linear probe and buy-and-hold;
- learning power of the search space: a pool of configurations sampled once (seeded) from configs/sweep.yaml's
  search space, each trained at the full budget with K = search seeds + fresh seeds in one lockstep run (seeds are
  independent in the trainer, so the search seeds are exactly what a sweep's trial sees). The pool's pick is the
  best validation Sharpe over the search seeds; every configuration's true quality is the mean test Sharpe of the
  fresh seeds, which no selection ever saw;
- search quality: the default sweep (``tune_main.py``: Optuna + ASHA, run for real, every market's sweep in one Ray
  session), its pick scored the same way, and the normalised regret (oracle best of the pool - pick) / (oracle best
  - pool median), on planted markets only; under the goals, the regret that the measurement's own noise puts on
  each pool (:func:`regret_floor`: what a picker that knew every configuration's quality would score, and one ranking
  by a validation as noisy as the pool's);
- compute, in agent-steps (env steps summed over seeds) of the search seeds: the pool (random search at full budget)
  and the sweep.

``--markets dev`` uses the generator seeds the defaults were chosen on, ``report`` (the default) the ones the goals
are judged on. ``--variants`` instead scores fixed configurations (the sweep file's base plus overrides) the same
way, to rank hypotheses cheaply.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "configs" / "sweep.yaml"
GENERATOR_SEEDS = {"dev": (0, 1, 2), "report": (100, 101, 102)}
NULL_SEEDS = {"dev": (0, 1), "report": (100, 101)}
VERDICT_LEVEL = 0.05  # issue 11's default level: the share of null markets a calibrated verdict may call skilled
GOALS = {"power_ratio": 0.8, "nonlinear_se": 2.0, "regret": 0.10, "compute_ratio": 0.5}


@dataclass(frozen=True)
class MarketSpec:
    """One benchmark market: the planted edge's kind and strength, and the generator seed."""

    kind: str
    seed: int
    strength: float

    @property
    def name(self) -> str:
        """``linear/s100``."""
        return f"{self.kind}/s{self.seed}"

    @property
    def planted(self) -> bool:
        """Whether it has an edge (regret and power are measured on these only)."""
        from dqlray.planted import EDGES

        return self.kind in EDGES


def market_specs(which: str, quick: bool, kinds: list[str] | None = None) -> list[MarketSpec]:
    """The markets of a run: every edge kind at each generator seed, then the null markets."""
    from dqlray.planted import DEFAULT_STRENGTH, EDGES, NULLS

    seeds, null_seeds = GENERATOR_SEEDS[which], NULL_SEEDS[which]
    if quick:
        seeds, null_seeds = seeds[:1], null_seeds[:1]
    specs = [MarketSpec(k, s, DEFAULT_STRENGTH[k]) for s in seeds for k in EDGES]
    nulls = NULLS[:1] if quick else NULLS
    specs += [MarketSpec(k, s, 0.0) for s in null_seeds for k in nulls]
    if kinds:
        specs = [m for m in specs if m.kind in kinds]
    return specs


def sample_pool(sf: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn from the sweep file's search space as the sweep's random search draws them
    (Optuna's ``RandomSampler``, seeded)."""
    import optuna

    from dqlray.tuning.search import optuna_space
    from dqlray.tuning.space import decode

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    space = optuna_space(sf)
    return [{k: decode(v) for k, v in study.ask(space).params.items()} for _ in range(n)]


def score_config(params: dict[str, Any], data: Any, base: Any, n_fresh: int) -> dict[str, Any]:
    """Train ``base`` + ``params`` at full budget with the search seeds and ``n_fresh`` fresh runs.

    A run is what one sweep trial trains: ``train.num_seeds`` seeds, scored as its seeds' mean or, with
    ``train.ensemble``, as their ensemble (one policy), at its last evaluation or, with ``train.select``, at the
    evaluation its own validation chose. The fresh runs are ``n_fresh`` more such runs on seeds no selection saw
    (``n_fresh`` seeds, or ``n_fresh`` ensembles of ``num_seeds`` seeds each), each choosing its own checkpoint on
    its own validation as a sweep would. All of them train as configurations of one pack, so the search run equals
    the sweep's. Returns the search seeds' validation Sharpe (what a sweep ranks by), the fresh runs' mean test
    Sharpe (the configuration's true quality; the test part of the search seeds is not used), and the agent-steps
    spent by the search seeds.
    """
    import torch

    from dqlray.dqn import evaluation_policy
    from dqlray.evaluation import evaluate_policy
    from dqlray.pack import PackRun
    from dqlray.parts import make_learner
    from dqlray.tuning.space import trial_config

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = trial_config(base, params)
    n_search, ensemble, seed = cfg.train.num_seeds, cfg.train.ensemble, cfg.train.seed
    per_run = n_search if ensemble else 1
    if cfg.train.select == "last":
        # Validation only after the last episode: it does not touch training (no random draws), so the search
        # seeds train exactly as in the sweep, where validation runs every episode.
        cfg = cfg.replace({"train": {"eval_every": cfg.train.episodes}})
    runs = [cfg] + [cfg.replace({"train": {"seed": seed + n_search + i * per_run, "num_seeds": per_run}})
                    for i in range(n_fresh)]
    pack = PackRun(runs, data)
    while pack.active:
        pack.run_episode()
    kept = [r.kept() for r in pack.results]  # (state, validation summary, validation returns, episode) per run
    test = []
    for run, (state, _, _, _) in zip(runs[1:], kept[1:], strict=True):
        learner = make_learner(run, pack.market)
        learner.load_state_dict(state)
        policy, n_envs = evaluation_policy(learner, ensemble=ensemble)
        ev = evaluate_policy(policy, pack.market, part="test", n_envs=n_envs, env=cfg.env,
                             periods=cfg.train.periods_per_year)
        test.extend(m["sharpe"] for m in ev.metrics)
    fresh = np.array(test)
    return {
        "params": params,
        "val_search": float(kept[0][1]["val_sharpe"]),
        "true": float(fresh.mean()),
        "true_se": float(fresh.std(ddof=1) / math.sqrt(len(fresh))) if len(fresh) > 1 else float("nan"),
        "test_fresh": fresh.tolist(),
        "selected_episode": [k[3] for k in kept],
        "search_steps": pack.env_steps * n_search,
        "wall_s": time.perf_counter() - t0,
    }


def reference_sharpes(spec: MarketSpec, data: Any, base: Any) -> dict[str, float]:
    """Test Sharpe of the planted rule (planted markets), the linear probe and buy-and-hold, at the base's costs."""
    from dqlray.baselines import make_baselines
    from dqlray.evaluation import evaluate_policy
    from dqlray.parts import build_market
    from dqlray.planted import Edge, PlantedRule

    ec = base.env
    market = build_market(base, data)
    pols = make_baselines(market, ec)
    out = {}
    chosen = {"probe": pols["linear_probe"], "buy_and_hold": pols["buy_and_hold"]}
    if spec.planted:
        chosen["ceiling"] = PlantedRule(market, ec.positions, Edge(kind=spec.kind, strength=spec.strength),
                                        cost_rate=(ec.fee_bps + ec.slippage_bps) * 1e-4)
    for name, pol in chosen.items():
        out[name] = evaluate_policy(pol, market, part="test", env=ec,
                                    periods=base.train.periods_per_year).metrics[0]["sharpe"]
    out["probe_penalty"] = pols["linear_probe"].fit.penalty
    return out


def run_default_sweep(data_file: Path, name: str, store: Path, address: str, log: Path,
                      config: str | Path = SWEEP_FILE) -> dict[str, Any]:
    """``tune_main.py`` with the sweep file's settings (the default one: the defaults) on one market, joined to the
    benchmark's Ray cluster; its results."""
    cmd = [sys.executable, str(ROOT / "tune_main.py"), "--config", str(config), "--data-file", str(data_file),
           "--experiment-name", name,
           "--storage-path", str(store), "--address", address, "--no-dashboard"]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        sys.exit(f"sweep {name} failed with exit code {proc.returncode} (log {log}):\n{tail}")
    exp = store / name
    summary = json.loads((exp / "summary.json").read_text())
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    n_seeds = int(json.loads((exp / "sweep_meta.json").read_text())["base_config"]["train"]["num_seeds"])
    steps = sum(int(float(r["env_steps"])) * n_seeds for r in rows if r.get("env_steps"))
    dsr = (summary.get("deflated_sharpe") or {}).get("dsr")
    verdict = summary.get("verdict") or {}
    return {
        "wall_s": wall,
        "best_params": summary["best_params"],
        "best_val": summary["best_val"]["val_sharpe"],
        "search_steps": steps,
        "n_trials": len(rows),
        "n_full": sum(r["stopped_by_asha"] != "True" for r in rows),
        "test_search_seeds": summary["test"]["agent"]["summary"]["sharpe"]["mean"],
        "dsr": dsr,
        # issue 11's verdict when it exists; until then, today's headline (DSR >= 0.5 reads "more likely skilled")
        "declared_skilled": bool(verdict["beats_benchmark"]) if "beats_benchmark" in verdict
        else (dsr is not None and dsr >= 0.5),
        "verdict_source": "verdict.beats_benchmark" if "beats_benchmark" in verdict else "DSR >= 0.5 (today's text)",
    }


def regret(pool_true: np.ndarray, picked: float) -> float:
    """(oracle best of the pool - picked) / (oracle best - pool median); NaN when the pool has no spread."""
    best, med = float(np.max(pool_true)), float(np.median(pool_true))
    return (best - picked) / (best - med) if best - med > 1e-12 else float("nan")


def regret_floor(true: np.ndarray, true_se: np.ndarray, val: np.ndarray | None = None, sims: int = 4000,
                 seed: int = 0) -> dict[str, float]:
    """The regret that measurement noise alone puts on one market's pool, by simulation from its own figures.

    Each configuration's measured true quality is its latent quality plus fresh-seed noise (its ``true_se``), so the
    pool's oracle (the best measured) is partly the luckiest measurement: even a picker that knew every latent
    quality would show a regret. The latent spread is estimated as ``var(true) - mean(true_se^2)`` (0 if negative);
    latent qualities are drawn normal with that spread, measured with each configuration's own standard error.

    Returns ``clairvoyant``: the mean regret of picking the best latent quality (the floor no selection can beat
    under this measurement); and, given the pool's validation values ``val``, ``by_validation``: the mean regret of
    picking the best of latent quality plus validation noise of ``var(val) - latent variance`` (validation and test
    quality assumed the same, on the same scale), what selecting on a validation this noisy should give; and
    ``latent_sd``. NaN where the pool has no latent spread to find.
    """
    true, se = np.asarray(true, float), np.asarray(true_se, float)
    se = np.where(np.isfinite(se), se, np.nanmean(se))
    latent_var = float(np.var(true, ddof=1) - np.mean(se**2))
    out = {"latent_sd": math.sqrt(max(latent_var, 0.0)), "clairvoyant": float("nan"), "by_validation": float("nan")}
    if latent_var <= 0:
        return out
    rng = np.random.default_rng(seed)
    n = len(true)
    q = rng.normal(0.0, out["latent_sd"], (sims, n))
    m = q + rng.normal(0.0, 1.0, (sims, n)) * se
    best, med = m.max(axis=1), np.median(m, axis=1)
    rows = np.arange(sims)

    def mean_regret(pick: np.ndarray) -> float:
        return float(np.mean((best - m[rows, pick]) / (best - med)))

    out["clairvoyant"] = mean_regret(q.argmax(axis=1))
    if val is not None:
        val_noise = math.sqrt(max(float(np.var(np.asarray(val, float), ddof=1)) - latent_var, 0.0))
        out["by_validation"] = mean_regret((q + rng.normal(0.0, val_noise, (sims, n))).argmax(axis=1))
        out["val_noise_sd"] = val_noise
    return out


def _parse_variants(text: str) -> list[dict[str, Any]]:
    """``'agent.gamma=0,agent.hidden=[16]; agent.gamma=0.5'`` to a list of flat override dicts (YAML values)."""
    out = []
    for chunk in text.split(";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        params: dict[str, Any] = {}
        depth, start, parts = 0, 0, []
        for i, ch in enumerate(chunk):  # split on commas outside brackets
            depth += ch == "["
            depth -= ch == "]"
            if ch == "," and depth == 0:
                parts.append(chunk[start:i])
                start = i + 1
        parts.append(chunk[start:])
        for p in parts:
            key, _, val = p.partition("=")
            value = yaml.safe_load(val)
            if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            params[key.strip()] = value
        out.append(params)
    return out


def _fmt(v: Any, spec: str = "+.2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _mean_se(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.power", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="one market per edge kind, one null market, a pool of 9 (under 10 minutes on 2 cores)")
    ap.add_argument("--markets", choices=("dev", "report"), default="report",
                    help="generator seeds: dev (defaults chosen on these) or report (goals judged on these)")
    ap.add_argument("--kinds", default=None, help="only these market kinds (comma-separated)")
    ap.add_argument("--bars", type=int, default=5000, help="bars per market")
    ap.add_argument("--pool", type=int, default=None,
                    help="configurations in the pool (default 27; 9 with --quick, the first 9 of the same draw)")
    ap.add_argument("--pool-seed", type=int, default=0, help="seed of the pool's sampling")
    ap.add_argument("--fresh-seeds", type=int, default=4,
                    help="fresh runs scoring every configuration (>= 2): seeds, or with train.ensemble ensembles of "
                         "train.num_seeds seeds each")
    ap.add_argument("--config", default=str(SWEEP_FILE), help="sweep file (search space, base config)")
    ap.add_argument("--variants", default=None, help="score these fixed configurations instead of pool and sweep")
    ap.add_argument("--no-sweep", action="store_true", help="skip the default sweep (pool and references only)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="CPUs of the benchmark's Ray cluster")
    ap.add_argument("--json", default=None, help="write every figure here (default: in the work folder)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="print the tables and goals of an earlier run's JSON again (no training)")
    args = ap.parse_args(argv)
    if args.render:
        return _render(Path(args.render))
    if args.pool is None:
        args.pool = 9 if args.quick else 27
    if args.fresh_seeds < 2:
        ap.error("--fresh-seeds must be >= 2 (a standard error needs two)")

    import ray

    from dqlray.data import load_ohlcv, save_ohlcv
    from dqlray.planted import Edge, planted_market
    from dqlray.tuning.space import parse_sweep_file

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="dqlray-bench-power-"))
    sf = parse_sweep_file(args.config)
    base = sf.base
    specs = market_specs(args.markets, args.quick, args.kinds.split(",") if args.kinds else None)
    variants = _parse_variants(args.variants) if args.variants else None
    pool = variants if variants is not None else sample_pool(sf, args.pool, args.pool_seed)
    print(f"bench.power: {len(specs)} markets ({args.markets} seeds{', quick' if args.quick else ''}), "
          f"{args.bars} bars, {'variants' if variants else 'pool'} of {len(pool)} configurations, "
          f"{base.train.num_seeds} search + {args.fresh_seeds} fresh seeds, budget {base.train.episodes} episodes; "
          f"{os.cpu_count()} cores, load average {load0[0]:.1f}; work folder {work}")

    files: dict[str, Path] = {}
    datas: dict[str, Any] = {}
    refs: dict[str, dict[str, float]] = {}
    for spec in specs:
        path = work / f"{spec.kind}_s{spec.seed}.csv"
        save_ohlcv(planted_market(args.bars, Edge(kind=spec.kind, strength=spec.strength), seed=spec.seed), path)
        files[spec.name], datas[spec.name] = path, load_ohlcv(path)  # everything uses the file the sweep reads
        refs[spec.name] = reference_sharpes(spec, datas[spec.name], base)

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        address = ray.get_runtime_context().gcs_address
        sweeps: dict[str, dict[str, Any]] = {}
        if variants is None and not args.no_sweep:
            for spec in specs:
                name = spec.name.replace("/", "_")
                sweeps[spec.name] = sw = run_default_sweep(files[spec.name], name, work / "sweeps", address,
                                                           work / f"sweep_{name}.log", args.config)
                print(f"  sweep {spec.name:<18} {sw['wall_s']:6.0f} s, {sw['n_trials']} trials ({sw['n_full']} at "
                      f"full budget), winner's validation Sharpe {sw['best_val']:+.2f}", flush=True)
        remote = ray.remote(num_cpus=1)(score_config)
        jobs: dict[Any, tuple[str, str | int]] = {}
        refs_data = {name: ray.put(d) for name, d in datas.items()}
        order = sorted(range(len(pool)), key=lambda i: -len(str(pool[i].get("agent.hidden", ""))))  # big first
        for spec in specs:
            if spec.planted or variants is not None:
                for i in order:
                    jobs[remote.remote(pool[i], refs_data[spec.name], base, args.fresh_seeds)] = (spec.name, i)
            if spec.name in sweeps:
                jobs[remote.remote(sweeps[spec.name]["best_params"], refs_data[spec.name], base,
                                   args.fresh_seeds)] = (spec.name, "pick")
        scores: dict[str, dict[str | int, dict[str, Any]]] = {s.name: {} for s in specs}
        pending = list(jobs)
        t_pool = time.perf_counter()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            name, key = jobs[done[0]]
            scores[name][key] = ray.get(done[0])
            n_done = len(jobs) - len(pending)
            if n_done % max(1, len(jobs) // 10) == 0 or not pending:
                print(f"  scored {n_done}/{len(jobs)} configuration runs ({time.perf_counter() - t_pool:.0f} s)",
                      flush=True)
    finally:
        ray.shutdown()

    wall = time.perf_counter() - t_start
    load1 = os.getloadavg()
    result = {"args": vars(args), "wall_s": wall, "load_start": load0, "load_end": load1, "cores": os.cpu_count(),
              "raw": {"specs": [vars(s) for s in specs], "pool": pool, "variants": variants, "sweeps": sweeps,
                      "refs": refs, "sweep_trials": sf.sweep.num_samples,
                      "scores": {n: {str(k): v for k, v in sc.items()} for n, sc in scores.items()}}}
    out = Path(args.json) if args.json else work / "power.json"
    out.write_text(json.dumps(result, indent=1, default=str))  # saved before anything can fail (--render re-reads it)
    _render_result(result)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"figures: {out}")
    return 0


def _render(path: Path) -> int:
    result = json.loads(path.read_text())
    _render_result(result)
    return 0


def _render_result(result: dict) -> None:
    """The tables and goals of a run (fills ``result["markets"]`` and ``result["goals"]``)."""
    raw = result["raw"]
    specs = [MarketSpec(**s) for s in raw["specs"]]
    scores = {n: {(int(k) if k.isdigit() else k): v for k, v in sc.items()} for n, sc in raw["scores"].items()}
    result["markets"] = {}
    if raw["variants"] is not None:
        _report_variants(specs, raw["variants"], scores, raw["refs"], result)
    else:
        _report_search(specs, raw["pool"], scores, raw["sweeps"], raw["refs"], result, raw["sweep_trials"])
    load0, load1 = result["load_start"], result["load_end"]
    print(f"\nwall time {result['wall_s']:.0f} s ({result['wall_s'] / 60:.1f} min) on {result['cores']} cores; "
          f"load average at start {load0[0]:.1f}, at end {load1[0]:.1f} (1 min), {load1[2]:.1f} (15 min)")


def _report_variants(specs: list[MarketSpec], variants: list[dict], scores: dict, refs: dict, result: dict) -> None:
    print("\nTest Sharpe (mean over fresh seeds ± standard error); ceiling = planted rule")
    names = [", ".join(f"{k.split('.')[-1]}={v}" for k, v in p.items()) or "(base)" for p in variants]
    head = f"{'market':<18}{'ceiling':>8}{'probe':>8}{'B&H':>8}" + "".join(f"{n[:22]:>24}" for n in names)
    print(head)
    print("-" * len(head))
    for spec in specs:
        r = refs[spec.name]
        cells = "".join(f"{_fmt(scores[spec.name][i]['true'])} ± {_fmt(scores[spec.name][i]['true_se'], '.2f'):>5}"
                        .rjust(24) for i in range(len(variants)))
        print(f"{spec.name:<18}{_fmt(r.get('ceiling')):>8}{_fmt(r['probe']):>8}{_fmt(r['buy_and_hold']):>8}{cells}")
        result["markets"][spec.name] = {"refs": r, "variants": [scores[spec.name][i] for i in range(len(variants))]}
    for kinds, label in ((("linear", "trend"), "linear + trend"), (("interaction",), "interaction")):
        sel = [s for s in specs if s.kind in kinds]
        if not sel:
            continue
        probe = np.mean([refs[s.name]["probe"] for s in sel])
        cells = []
        for i in range(len(variants)):
            m, se = _mean_se([scores[s.name][i]["true"] for s in sel])
            cells.append(f"{_fmt(m)} ({m / probe:.0%})" if probe > 0 else _fmt(m))
        print(f"{'mean ' + label:<18}{'':>8}{_fmt(probe):>8}{'':>8}" + "".join(f"{c:>24}" for c in cells))


def _report_search(specs: list[MarketSpec], pool: list[dict], scores: dict, sweeps: dict, refs: dict,
                   result: dict, sweep_trials: int) -> None:
    print("\nTest Sharpe per market (true quality = mean over fresh seeds); regret = (oracle - pick) / (oracle - median)")
    print("  oracle/median: the pool's best and median true quality; pool pick: the pool's best on validation (random "
          "search at full budget);\n  regret: the sweep's pick's, pool rgt: the pool pick's; steps %: the sweep's "
          "agent-steps over random search's at full budget (as many trials, search seeds only); skill?: the sweep's claim")
    head = (f"{'market':<18}{'ceiling':>8}{'probe':>8}{'B&H':>7}{'oracle':>8}{'median':>8}{'pool pick':>10}"
            f"{'sweep pick':>14}{'regret':>8}{'pool rgt':>9}{'steps %':>8}{'skill?':>7}")
    print(head)
    print("-" * len(head))
    planted_rows, null_rows = [], []
    for spec in specs:
        r, sc, sw = refs[spec.name], scores[spec.name], sweeps.get(spec.name)
        row: dict[str, Any] = {"refs": r, "kind": spec.kind, "seed": spec.seed, "strength": spec.strength}
        pick = sc.get("pick")
        if sw is not None:
            row["sweep"] = {**sw, "pick_true": pick["true"] if pick else None,
                            "pick_true_se": pick["true_se"] if pick else None,
                            "pick_val_search_rescored": pick["val_search"] if pick else None}
        cells = {"oracle": None, "median": None, "pool_pick": None, "regret": None, "regret_pool": None,
                 "steps": None}
        if spec.planted:
            pool_scores = [sc[i] for i in range(len(pool))]
            true = np.array([p["true"] for p in pool_scores])
            val = np.array([p["val_search"] for p in pool_scores])
            pool_pick = float(true[int(np.argmax(val))])
            pool_steps = int(sum(p["search_steps"] for p in pool_scores))
            # random search at full budget with the sweep's number of trials (the pool may be smaller in --quick)
            full_steps = int(np.mean([p["search_steps"] for p in pool_scores]) * sweep_trials)
            cells.update(oracle=float(true.max()), median=float(np.median(true)), pool_pick=pool_pick,
                         regret_pool=regret(true, pool_pick))
            row["pool"] = {"true": true.tolist(), "val_search": val.tolist(),
                           "true_se": [p["true_se"] for p in pool_scores], "pick_index": int(np.argmax(val)),
                           "oracle_index": int(np.argmax(true)), "search_steps": pool_steps,
                           "random_full_steps": full_steps,
                           **{k: cells[k] for k in ("oracle", "median", "pool_pick", "regret_pool")}}
            row["pool"]["floor"] = regret_floor(true, row["pool"]["true_se"], val, seed=len(planted_rows))
            if pick is not None:
                cells["regret"] = regret(true, pick["true"])
                cells["steps"] = sw["search_steps"] / full_steps
                row["sweep"]["regret"] = cells["regret"]
                row["sweep"]["steps_vs_pool"] = cells["steps"]
            planted_rows.append((spec, row))
        elif sw is not None:
            null_rows.append((spec, row))
        pick_txt = f"{_fmt(pick['true'])} ± {_fmt(pick['true_se'], '.2f')}" if pick else "-"
        skill = ("yes" if sw["declared_skilled"] else "no") if sw is not None else "-"
        print(f"{spec.name:<18}{_fmt(r.get('ceiling')):>8}{_fmt(r['probe']):>8}{_fmt(r['buy_and_hold']):>7}"
              f"{_fmt(cells['oracle']):>8}{_fmt(cells['median']):>8}{_fmt(cells['pool_pick']):>10}{pick_txt:>14}"
              f"{_fmt(cells['regret'], '.2f'):>8}{_fmt(cells['regret_pool'], '.2f'):>9}"
              f"{_fmt(cells['steps'] * 100 if cells['steps'] is not None else None, '.0f'):>8}{skill:>7}")
        result["markets"][spec.name] = row
    result["pool_params"] = pool
    if planted_rows:
        # Is the pool's spread of true quality larger than the noise in measuring it? If not, its oracle best and
        # median (and so the regret's denominator) are mostly seed noise. Rank correlation of validation (search
        # seeds) with true quality (fresh seeds): how much selecting on validation can find.
        import pandas as pd

        spread = np.mean([np.std(row["pool"]["true"], ddof=1) for _, row in planted_rows])
        noise = np.mean([np.mean(row["pool"]["true_se"]) for _, row in planted_rows])
        rho = np.mean([pd.Series(row["pool"]["val_search"]).corr(pd.Series(row["pool"]["true"]), method="spearman")
                       for _, row in planted_rows])
        result["pool_diagnostics"] = {"true_sd": float(spread), "true_se": float(noise), "val_true_spearman": rho}
        print(f"  pool: spread of true quality across configurations (sd) {spread:.2f} against its measurement noise "
              f"(standard error over fresh seeds) {noise:.2f}; Spearman correlation of validation with true quality "
              f"{rho:+.2f} (means over planted markets)")
    same = [abs(row["sweep"]["pick_val_search_rescored"] - row["sweep"]["best_val"]) < 1e-9
            for _, row in planted_rows + null_rows if "sweep" in row]
    if same:
        print(f"  rescoring the sweep's winner reproduces its validation Sharpe on the search seeds: {sum(same)} of "
              f"{len(same)} markets (a check that the lockstep seeds are the sweep's)")
    _goals(planted_rows, null_rows, sweeps, result)
    _parameter_effects(pool, planted_rows, result)


def _goals(planted_rows: list, null_rows: list, sweeps: dict, result: dict) -> None:
    goals: dict[str, Any] = {}
    print("\nGoals (issue 12)")
    have_sweep = bool(sweeps)
    for kinds, label in ((("linear", "trend"), "linear + trend"), (("interaction",), "interaction")):
        sel = [row for spec, row in planted_rows if spec.kind in kinds]
        if not sel:
            continue
        probe = float(np.mean([row["refs"]["probe"] for row in sel]))
        pool_pick = float(np.mean([row["pool"]["pool_pick"] for row in sel]))
        ceiling = float(np.mean([row["refs"]["ceiling"] for row in sel]))
        line = (f"  {label} ({len(sel)} markets): ceiling {ceiling:+.2f}, probe {probe:+.2f}, "
                f"pool's validation pick {pool_pick:+.2f}")
        if have_sweep:
            picks = [row["sweep"]["pick_true"] for row in sel]
            mean_pick = float(np.mean(picks))
            line += f", sweep's pick {mean_pick:+.2f}"
            if kinds == ("linear", "trend"):
                ratio = mean_pick / probe if probe > 0 else float("nan")
                ok = bool(probe > 0 and mean_pick >= GOALS["power_ratio"] * probe)
                goals["power_linear_trend"] = {"pick": mean_pick, "probe": probe, "ratio": ratio, "met": ok}
                line += f"\n    goal: pick >= {GOALS['power_ratio']:.0%} of the probe: {ratio:.0%}, " \
                        f"{'met' if ok else 'NOT met'}"
            else:
                diffs = [row["sweep"]["pick_true"] - row["refs"]["probe"] for row in sel]
                if len(diffs) >= 3:
                    d, se = _mean_se(diffs)
                    how = f"across {len(diffs)} markets"
                else:  # too few markets for their spread: the fresh seeds' standard error alone
                    d = float(np.mean(diffs))
                    se = float(np.sqrt(np.sum([row["sweep"]["pick_true_se"] ** 2 for row in sel])) / len(sel))
                    how = "from the fresh seeds only: too few markets for their spread, indicative only"
                ok = bool(d > GOALS["nonlinear_se"] * se)
                goals["power_interaction"] = {"pick_minus_probe": d, "se": se, "se_from": how, "met": ok}
                line += (f"\n    goal: pick - probe > {GOALS['nonlinear_se']:g} SE: {d:+.2f} ± {se:.2f} ({how}), "
                         f"{'met' if ok else 'NOT met'}")
        print(line)
    if have_sweep and planted_rows:
        regrets = [row["sweep"]["regret"] for _, row in planted_rows]
        pool_regrets = [row["pool"]["regret_pool"] for _, row in planted_rows]
        steps = float(np.sum([row["sweep"]["search_steps"] for _, row in planted_rows])
                      / np.sum([row["pool"]["random_full_steps"] for _, row in planted_rows]))
        finite = [r for r in regrets if math.isfinite(r)]
        r_mean, r_se = _mean_se(finite)
        ok = bool(r_mean <= GOALS["regret"] and steps <= GOALS["compute_ratio"])
        goals["search_quality"] = {"mean_regret": r_mean, "se": r_se, "median_regret": float(np.median(finite)),
                                   "pool_pick_mean_regret":
                                   float(np.nanmean(pool_regrets)), "compute_ratio": steps, "met": ok}
        print(f"  search quality: mean normalised regret of the sweep's pick {r_mean:.2f} ± {_fmt(r_se, '.2f')} "
              f"(median {np.median(finite):.2f}; the pool's own validation pick: mean {np.nanmean(pool_regrets):.2f})"
              f" at {steps:.0%} of the agent-steps of random search at full budget\n"
              f"    goal: regret <= {GOALS['regret']:.2f} at <= {GOALS['compute_ratio']:.0%} of the compute: "
              f"{'met' if ok else 'NOT met'}")
    if planted_rows:
        clair = float(np.nanmean([row["pool"]["floor"]["clairvoyant"] for _, row in planted_rows]))
        by_val = float(np.nanmean([row["pool"]["floor"]["by_validation"] for _, row in planted_rows]))
        spread = sum(row["pool"]["floor"]["latent_sd"] > 0 for _, row in planted_rows)
        result["regret_floor"] = {"clairvoyant": clair, "by_validation": by_val, "markets_with_spread": spread}
        print(f"  what bounds the regret (simulated from each market's pool: the spread of its configurations' "
              f"quality and the noise of measuring it on {result['args']['fresh_seeds']} fresh seeds):\n"
              f"    a picker that knew every configuration's quality: {clair:.2f}; one ranking by a validation as "
              f"noisy as this one: {by_val:.2f} (means over the {spread} of {len(planted_rows)} planted markets\n"
              f"    whose pool's spread exceeds that noise; on the others every regret is noise)")
    if null_rows:
        claims = sum(row["sweep"]["declared_skilled"] for _, row in null_rows)
        allowed = math.floor(VERDICT_LEVEL * len(null_rows))
        ok = claims <= allowed
        src = null_rows[0][1]["sweep"]["verdict_source"]
        bh = np.mean([row["refs"]["buy_and_hold"] for _, row in null_rows])
        pick = np.mean([row["sweep"]["pick_true"] for _, row in null_rows])
        goals["null"] = {"markets": len(null_rows), "declared_skilled": claims, "allowed": allowed,
                         "source": src, "met": ok}
        print(f"  null markets ({len(null_rows)}): the pick declared skilled on {claims} ({src}); buy-and-hold "
              f"{bh:+.2f}, the pick's fresh seeds {pick:+.2f}\n    goal: at most the verdict's false-positive "
              f"rate ({VERDICT_LEVEL:.0%}, i.e. {allowed} of {len(null_rows)}): {'met' if ok else 'NOT met'}")
    result["goals"] = goals


def _parameter_effects(pool: list[dict], planted_rows: list, result: dict) -> None:
    """Which searched parameters go with a good true quality: Spearman correlation over the pool, per edge kind."""
    if not planted_rows:
        return
    import pandas as pd

    from dqlray.tuning.space import decode

    kinds = sorted({spec.kind for spec, _ in planted_rows})
    # a configuration's quality on a kind: its true Sharpe averaged over that kind's markets
    quality = {k: np.mean([row["pool"]["true"] for spec, row in planted_rows if spec.kind == k], axis=0) for k in kinds}
    print("\nPool: Spearman correlation of each searched parameter with the true test Sharpe (hidden as total units)")
    print(f"{'parameter':<26}" + "".join(f"{k:>13}" for k in kinds))
    effects: dict[str, dict[str, float]] = {}
    for key in pool[0]:
        vals = [decode(p[key]) for p in pool]
        x = np.array([sum(v) if isinstance(v, list) else (v == "double_dueling") if isinstance(v, str) else v
                      for v in vals], dtype=float)
        if np.ptp(x) == 0:
            continue
        effects[key] = {k: float(pd.Series(x).corr(pd.Series(quality[k]), method="spearman")) for k in kinds}
        print(f"{key:<26}" + "".join(f"{effects[key][k]:>+13.2f}" for k in kinds))
    overall = np.mean([quality[k] for k in kinds], axis=0)
    top = np.argsort(-overall)[:3]
    print("best configurations over all planted markets:")
    for i in top:
        print(f"  {overall[i]:+.2f}  " + ", ".join(f"{k.split('.')[-1]}={_short(decode(v))}" for k, v in pool[i].items()))
    result["parameter_effects"] = effects


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
