"""Packed trials (issue 14): M configurations x K seeds in one pack against M separate K-seed runs, one core each.

    python -m bench.pack_throughput [--configs 8] [--seeds 2] [--episodes 8] [--repeats 2] [--memory 16,32]
                                    [--device cpu] [--json out.json]

Two sets of ``--configs`` configurations, each trained twice in its own child process pinned to the idlest core:
once as separate ``dqlray.trainer.train`` runs one after another (what one Tune trial per configuration costs in
compute, without Tune's own overhead), once as one :class:`dqlray.pack.PackRun`.

- ``same shapes``: configurations drawn from configs/sweep.yaml's search space with the shape-setting values (hidden
  widths, batch size, agent type) held at their defaults, so no member is padded;
- ``default space``: drawn from the whole search space, so the pack pads widths to 128 units, batches to 128
  samples, and carries a dueling branch for its plain members;
- ``by shape``: three times as many configurations from the whole space, grouped by
  :func:`dqlray.pack.group_configs` into packs of at most ``--configs`` (ordered by compute cost and cut where one
  more pack costs less than padding), the packs trained one after another.

Budget: ``--episodes`` episodes of 250 steps (the sweep's episode length), validation at the end only, on
data/test_small.csv with the sweep file's base settings. Throughput is agent-steps (env steps x members) per second
of wall time and per second of the child's CPU time (the steadier figure on a shared machine). Each child also
checks that the pack's configurations end where their separate runs end (final validation Sharpe).

Then (``--scaling``) how throughput grows with the pack: packs of 1, 4, 8, 16, 32 same-shaped configurations (widths
32 and 64, batches as wide) in a child per width; what ``--pack auto``'s cap and the pack cost model
(:data:`dqlray.pack.PACK_OVERHEAD`) are read from.

Then, in fresh children, the peak RSS (``ru_maxrss``) of packs of ``--memory`` configurations x ``--seeds`` seeds from
the default space with the sweep's buffer size, after four episodes, next to a single K-seed run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "configs" / "sweep.yaml"
SHAPE_KEYS = ("agent.hidden", "agent.batch_size", "agent.agent_type")
SCENARIOS = ("same shapes", "default space", "by shape")
MEMORY_EPISODES = 4  # 1,000 env steps: learning starts at 500


def sample_configs(n: int, seed: int, seeds: int, episodes: int, same_shapes: bool) -> list[Any]:
    """``n`` configurations drawn (seeded) from the sweep file's search space, each with ``seeds`` seeds."""
    import numpy as np

    from dqlray.tuning.space import parse_sweep_file, trial_config

    sf = parse_sweep_file(SWEEP_FILE)
    rng = np.random.default_rng(seed)
    base = sf.base.replace({"train": {"num_seeds": seeds, "episodes": episodes, "eval_every": episodes,
                                      "checkpoint_every": episodes, "torch_threads": 1}})
    out = []
    for i in range(n):
        params: dict[str, Any] = {}
        for key, spec in sf.search.items():
            kind, args = next(iter(spec.items()))
            if same_shapes and key in SHAPE_KEYS:
                continue
            if kind == "loguniform":
                params[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
            elif kind == "uniform":
                params[key] = float(rng.uniform(args[0], args[1]))
            elif kind == "randint":
                params[key] = int(rng.integers(args[0], args[1] + 1))
            else:
                params[key] = args[int(rng.integers(len(args)))]
        params["train.experiment_name"] = f"c{i}"
        out.append(trial_config(base, params))
    return out


def _rusage() -> tuple[float, float]:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime


def child_speed(spec: dict[str, Any]) -> dict[str, Any]:
    """Train the configurations separately and as one pack (order given by ``spec['order']``); time both."""
    import torch

    from dqlray.data import load_ohlcv
    from dqlray.pack import group_configs, train_pack
    from dqlray.trainer import train

    torch.set_num_threads(1)
    n = spec["configs"] * (3 if spec["scenario"] == "by shape" else 1)
    cfgs = sample_configs(n, spec["seed"], spec["seeds"], spec["episodes"], spec["scenario"] == "same shapes")
    cfgs = [c.replace({"train": {"device": spec["device"]}}) for c in cfgs]
    packs = group_configs(cfgs, spec["configs"])
    data = load_ohlcv(cfgs[0].data.data_file)
    steps = sum(c.train.episodes * 250 * c.train.num_seeds for c in cfgs)
    out: dict[str, Any] = {"agent_steps": steps, "rows": [sum(cfgs[i].train.num_seeds for i in p) for p in packs],
                           "pack_hidden": [sorted({tuple(cfgs[i].agent.hidden) for i in p}) for p in packs],
                           "hidden": sorted({tuple(c.agent.hidden) for c in cfgs}),
                           "batch": sorted({c.agent.batch_size for c in cfgs}),
                           "types": sorted({c.agent.agent_type for c in cfgs}),
                           "n_step": sorted({c.agent.n_step for c in cfgs})}
    finals: dict[str, list[float]] = {}
    for how in spec["order"]:
        c0, t0 = time.process_time(), time.perf_counter()
        if how == "separate":
            finals[how] = [train(c, data, progress=False).final["val_sharpe"] for c in cfgs]
        else:
            finals[how] = [0.0] * len(cfgs)
            for p in packs:
                for i, r in zip(p, train_pack([cfgs[i] for i in p], data), strict=True):
                    finals[how][i] = r.history[-1]["val_sharpe"]
        out[how] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    out["max_val_sharpe_diff"] = max(abs(a - b) for a, b in zip(finals["separate"], finals["pack"], strict=True))
    return out


def child_scaling(spec: dict[str, Any]) -> dict[str, Any]:
    """Agent-steps per CPU-second of packs of each size in ``spec['sizes']``, every member ``spec['width']`` wide."""
    import torch

    from dqlray.data import load_ohlcv
    from dqlray.pack import PackRun

    torch.set_num_threads(1)
    w = spec["width"]
    cfgs = [c.replace({"agent": {"hidden": [w, w], "batch_size": w, "agent_type": "dqn"}})
            for c in sample_configs(max(spec["sizes"]), spec["seed"], spec["seeds"], 100, True)]
    data = load_ohlcv(cfgs[0].data.data_file)
    out = {}
    for m in spec["sizes"]:
        run = PackRun(cfgs[:m], data)
        for _ in range(3):  # past learning_starts
            run.run_episode()
        c0 = time.process_time()
        for _ in range(spec["episodes"]):
            run.run_episode()
        out[str(m)] = run.learner.k * run.per_episode * spec["episodes"] / (time.process_time() - c0)
    return {"width": w, "steps_per_cpu_s": out}


def child_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one pack (or one run) of the default space after ``MEMORY_EPISODES`` episodes."""
    import torch

    from dqlray.data import load_ohlcv
    from dqlray.pack import PackRun
    from dqlray.trainer import replay_bytes, train

    torch.set_num_threads(1)
    cfgs = sample_configs(spec["configs"], spec["seed"], spec["seeds"], MEMORY_EPISODES, False)
    data = load_ohlcv(cfgs[0].data.data_file)
    rss0, _ = _rusage()
    if spec["configs"] == 1:
        res = train(cfgs[0], data, progress=False)
        replay = replay_bytes(cfgs[0])
        assert res.extra["replay_bytes"] == replay
    else:
        run = PackRun(cfgs, data)
        replay = run.buffer.nbytes
        while run.active:
            run.run_episode()
    rss, _ = _rusage()
    return {"configs": spec["configs"], "rows": spec["configs"] * spec["seeds"], "peak_rss_mb": rss,
            "rss_before_mb": rss0, "replay_mb": replay / 2**20}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=8, help="configurations per pack (M)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per configuration (K)")
    ap.add_argument("--episodes", type=int, default=8, help="episodes of 250 env steps per member")
    ap.add_argument("--repeats", type=int, default=2, help="rounds (the order separate/pack alternates)")
    ap.add_argument("--memory", default="16,32", help="pack sizes (configurations) whose peak RSS is measured")
    ap.add_argument("--scaling", default="1,4,8,16,32", help="pack sizes of the scaling table (empty: skip it)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the speed runs)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the configuration draws")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        child = {"memory": child_memory, "scaling": child_scaling, "speed": child_speed}[spec["kind"]]
        print(json.dumps(child(spec)))
        return

    import platform

    import torch

    from bench.throughput import dqlray_version, run_child

    print(f"dqlray {dqlray_version()}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.repeats):
        for name in SCENARIOS:
            order = ["separate", "pack"] if rep % 2 == 0 else ["pack", "separate"]
            spec = {"kind": "speed", "configs": args.configs, "seeds": args.seeds, "episodes": args.episodes,
                    "seed": args.seed, "scenario": name, "order": order, "device": args.device}
            r = run_child(spec, [], 3600, module="bench.pack_throughput")
            runs.setdefault(name, []).append(r)
            print(f"  round {rep + 1} {name:<14} core {r['core']}: separate {r['separate']['cpu_s']:.1f} CPU-s, "
                  f"pack {r['pack']['cpu_s']:.1f} CPU-s", flush=True)
    m, k = args.configs, args.seeds
    print(f"\nPacks of {m} configurations x {k} seeds against separate K={k} runs, "
          f"{args.episodes * 250:,} env steps per member, one core, device {args.device} (median of {args.repeats})")
    head = f"{'configurations':<16}{'how':<26}{'wall s':>8}{'CPU s':>8}{'agent-steps/s':>15}{'per CPU-s':>11}{'x':>6}"
    print(head)
    print("-" * len(head))
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        med = {how: {key: statistics.median(r[how][key] for r in rs) for key in ("wall_s", "cpu_s")}
               for how in ("separate", "pack")}
        steps = rs[0]["agent_steps"]
        rows = rs[0]["rows"]
        packs = f"one pack ({rows[0]} rows)" if len(rows) == 1 else f"{len(rows)} packs ({'+'.join(map(str, rows))} rows)"
        for how, label in (("separate", f"{sum(rows) // k} runs one by one"), ("pack", packs)):
            x = med["separate"]["cpu_s"] / med[how]["cpu_s"]
            print(f"{name:<16}{label:<26}{med[how]['wall_s']:>8.1f}{med[how]['cpu_s']:>8.1f}"
                  f"{steps / med[how]['wall_s']:>15,.0f}{steps / med[how]['cpu_s']:>11,.0f}{x:>6.1f}")
        r0 = rs[0]
        if len(rows) > 1:
            print(f"{'':<16}(widths per pack: " + "; ".join(", ".join(str(h[0]) for h in ph)
                                                         for ph in r0["pack_hidden"]) + ")")
        print(f"{'':<16}(hidden {', '.join(str(list(h)) for h in r0['hidden'])}; batch {r0['batch']}; "
              f"{', '.join(r0['types'])}; n-step {r0['n_step']}; largest |val Sharpe pack - separate| "
              f"{max(r['max_val_sharpe_diff'] for r in rs):.1e})")
        summary[name] = {"median": med, "agent_steps": steps, "runs": rs}
    scaling = []
    pack_sizes = [int(x) for x in args.scaling.split(",") if x]
    if pack_sizes:
        for w in (32, 64):
            scaling.append(run_child({"kind": "scaling", "sizes": pack_sizes, "width": w, "seeds": k,
                                      "seed": args.seed, "episodes": 2}, [], 3600, module="bench.pack_throughput"))
        print(f"\nAgent-steps per CPU-second by pack size (same-shaped configurations x {k} seeds, one core)")
        print(f"{'width = batch':<16}" + "".join(f"{'M=' + str(m):>10}" for m in pack_sizes))
        for r in scaling:
            print(f"{r['width']:<16}" + "".join(f"{r['steps_per_cpu_s'][str(m)]:>10,.0f}" for m in pack_sizes))
    mem = []
    sizes = [int(x) for x in args.memory.split(",") if x]
    for n in [1, *sizes]:
        r = run_child({"kind": "memory", "configs": n, "seeds": k, "seed": args.seed}, [], 3600,
                      module="bench.pack_throughput")
        mem.append(r)
    print(f"\nPeak RSS after {MEMORY_EPISODES} episodes (default space, buffer_size from {SWEEP_FILE.name}, "
          f"{k} seeds per configuration)")
    for r in mem:
        what = "one run (train())" if r["configs"] == 1 else f"pack of {r['configs']} configurations"
        print(f"  {what:<34}{r['rows']:>4} rows  peak RSS {r['peak_rss_mb']:>6.0f} MB  (replay {r['replay_mb']:.1f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"speed": summary, "scaling": scaling, "memory": mem,
                                               "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
