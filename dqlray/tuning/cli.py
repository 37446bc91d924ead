"""``tune_main.py`` (the sweep) and ``dqlray consolidate`` (one table of finished experiments)."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dqlray.cli import _flag, _Parser, run_cli
from dqlray.errors import ConfigError, DqlrayError

DEFAULT_SWEEP_FILE = "configs/sweep.yaml"


def build_tune_parser() -> argparse.ArgumentParser:
    """Arguments of ``tune_main.py``."""
    p = _Parser(prog="tune_main.py", description="Ray Tune sweep of DQN trading agents (ASHA + Optuna).")
    _flag(p, "config", default=None, help=f"sweep YAML (default {DEFAULT_SWEEP_FILE}; a resumed sweep keeps its own)")
    _flag(p, "num_samples", type=int, default=None, help="trials for optuna/random search")
    p.add_argument("--search", choices=("optuna", "random", "grid"), default=None,
                   help="optuna (default), random, or grid (the guide's 27 points, each once)")
    _flag(p, "data_file", default=None, help="price file (overrides data.data_file)")
    _flag(p, "episodes", type=int, default=None, help="full budget per trial in episodes (ASHA's max_t)")
    _flag(p, "agent_type", default=None, help="fix the agent type for every trial")
    _flag(p, "num_seeds", type=int, default=None, help="seeds per trial, trained in lockstep")
    _flag(p, "experiment_name", default=None, help="experiment folder name (default: the config file's stem)")
    _flag(p, "storage_path", default=os.environ.get("DQLRAY_STORAGE", "results"),
          help="where experiments are stored; a shared filesystem on clusters")
    p.add_argument("--address", default=None, help="join a running Ray cluster (or set RAY_ADDRESS)")
    _flag(p, "cpus_per_trial", type=float, default=None)
    _flag(p, "gpus_per_trial", type=float, default=None, help="e.g. 0.25: four trials share a GPU")
    _flag(p, "max_concurrent", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of the search algorithm")
    p.add_argument("--pack", type=_pack_value, default=None, metavar="auto|M",
                   help="configurations trained together per trial as one batched network (1: one per trial; "
                        "auto, the default: sized to the sweep and the device)")
    _flag(p, "benchmark", default=None,
          help="the baseline the verdict measures skill against (default buy_and_hold; sets verdict.benchmark)")
    _flag(p, "walk_forward", type=int, default=None, metavar="N",
          help="N walk-forward folds, each with its own sweep; the test blocks stitched (sets data.walk_forward)")
    p.add_argument("--fold", type=int, default=None, metavar="I",
                   help="with --walk-forward: run fold I only (one driver per fold; a final --resume stitches)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment of that name")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray only)")
    _flag(p, "telegram_token", default=None, help="DISCOURAGED: visible to other users; use TELEGRAM_BOT_TOKEN")
    _flag(p, "telegram_chat_id", default=None)
    return p


def _pack_value(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--pack {text!r}: auto or an integer >= 1")
    return value


def tune_main(argv: Sequence[str] | None = None, *, trainable: Any = None) -> int:
    """Run the sweep; exit 0 complete, 75 stopped with state saved, 2 bad input, 1 failure.

    ``trainable`` replaces the Tune trainable (tests wrap the real one to inject faults).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Until Tune's own handler is installed inside fit(), SIGUSR1 (SLURM's warning before the time limit) would
    # kill the driver by default: remember it instead, and stop before starting trials.
    early: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: early.append(signum))
    # SIGTERM stops the sweep as SIGUSR1 does (state saved, exit 75, the experiment folder unlocked; issue 13):
    # re-sent as SIGUSR1, it reaches the handler above before the sweep starts and Tune's own during it.
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGUSR1))
    return run_cli("tune_main.py",
                   lambda: _run(build_tune_parser().parse_args(argv), stop_requested=lambda: bool(early),
                                trainable=trainable))


def _run(args: argparse.Namespace, stop_requested: Any = None, trainable: Any = None) -> int:
    from dqlray.notify import get_notifier
    from dqlray.tuning.space import parse_sweep_file
    from dqlray.tuning.sweep import SweepRun, run_sweep, stored_sweep_file
    from dqlray.tuning.walkforward import run_walk_forward_sweep, stored_walk_forward

    overrides: dict[str, dict[str, Any]] = {}
    for flag, sec, fld in (("data_file", "data", "data_file"), ("episodes", "train", "episodes"),
                           ("agent_type", "agent", "agent_type"), ("num_seeds", "train", "num_seeds"),
                           ("benchmark", "verdict", "benchmark"), ("walk_forward", "data", "walk_forward")):
        v = getattr(args, flag)
        if v is not None:
            overrides.setdefault(sec, {})[fld] = v
    sweep_over = {"num_samples": args.num_samples, "search": args.search, "cpus_per_trial": args.cpus_per_trial,
                  "gpus_per_trial": args.gpus_per_trial, "max_concurrent": args.max_concurrent, "seed": args.seed,
                  "pack": args.pack}
    if args.resume:
        if not args.experiment_name:
            raise ConfigError("--resume needs --experiment-name (the folder name under --storage-path)")
        name = args.experiment_name
        # Every setting of the original command comes back from the experiment folder (issue 13), --walk-forward
        # included: flags given again must agree with it.
        given = {"config_path": args.config, "overrides": overrides, "sweep_overrides": sweep_over}
        sf = (stored_walk_forward(Path(args.storage_path).resolve() / name, **given)
              or stored_sweep_file(Path(args.storage_path) / name, **given))
    else:
        config = args.config or DEFAULT_SWEEP_FILE
        sf = parse_sweep_file(config, overrides, sweep_over)
        if args.agent_type is not None:  # a fixed agent type is not searched
            sf = type(sf)(base=sf.base, search={k: v for k, v in sf.search.items() if k != "agent.agent_type"},
                          grid=sf.grid, sweep=sf.sweep, source=sf.source)
        name = args.experiment_name or f"{Path(config).stem}_{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or not name:
        raise ConfigError(f"--experiment-name {name!r}: a non-empty name without '/'")
    # The process's one notifier (issue 15), made here from the guide's flags; run_sweep and its callback share it.
    get_notifier(token=args.telegram_token, chat_id=args.telegram_chat_id)
    run = SweepRun(sweep_file=sf, experiment_name=name, storage_path=args.storage_path, address=args.address,
                   resume=args.resume, dashboard=not args.no_dashboard)
    if sf.base.data.walk_forward:
        if args.fold is not None and not args.experiment_name:
            raise ConfigError("--fold needs --experiment-name: every fold's driver names the same experiment")
        return run_walk_forward_sweep(run, only_fold=args.fold, stop_requested=stop_requested, trainable=trainable)
    if args.fold is not None:
        raise ConfigError(f"--fold {args.fold}: only with --walk-forward N (or a walk-forward experiment to resume)")
    return run_sweep(run, stop_requested=stop_requested, trainable=trainable)


def consolidate(results_dir: str | Path) -> pd.DataFrame:
    """One row per finished experiment under ``results_dir``: single runs (eval.json), sweeps and walk-forward
    experiments (summary.json), each with its verdict against the benchmark (issue 11)."""
    rows = []
    root = Path(results_dir)
    for ev_path in sorted(root.glob("*/eval.json")):
        ev = json.loads(ev_path.read_text())
        meta_p = ev_path.parent / "meta.json"
        meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
        rows.append(_row(ev_path.parent.name, "single", ev, meta.get("data_hash"), None, ev.get("verdict")))
    for s_path in sorted(root.glob("*/summary.json")):
        s = json.loads(s_path.read_text())
        if "test" not in s:
            continue
        kind = "walk-forward" if s.get("kind") == "walk_forward" else "sweep"
        rows.append(_row(s_path.parent.name, kind, s["test"], s.get("data_hash"), s.get("deflated_sharpe"),
                         s.get("verdict")))
    return pd.DataFrame(rows)


def _row(name: str, kind: str, ev: dict, dhash: str | None, dsr: dict | None, verdict: dict | None
         ) -> dict[str, Any]:
    from dqlray.verdict import verdict_cells

    summ = ev["agent"]["summary"]
    row = {"experiment": name, "kind": kind, "seeds": len(ev.get("seeds", [])), "data_hash": dhash,
           "costs_bps": ev.get("costs_bps")}
    for k in ("sharpe", "total_return", "max_drawdown", "sortino", "num_trades"):
        row[f"test_{k}"] = summ[k]["mean"]
        row[f"test_{k}_sd"] = summ[k]["std"]
    bh = ev["baselines"].get("buy_and_hold", {})
    row["bh_sharpe"] = bh.get("sharpe")
    row["bh_total_return"] = bh.get("total_return")
    row.update(verdict_cells(verdict))
    row["dsr_zero_null"] = dsr.get("dsr") if dsr else None  # a detail: its null is a Sharpe of 0, not the benchmark
    row["statement"] = (verdict or {}).get("statement")
    return row


def add_consolidate_parser(sub: Any) -> None:
    """Register ``dqlray consolidate``."""
    sp = sub.add_parser("consolidate", help="gather finished runs and sweeps into one table (CSV)")
    sp.add_argument("--results_dir", "--results-dir", default="results")
    sp.add_argument("--out", default=None, help="CSV path (default <results_dir>/consolidated.csv)")
    sp.set_defaults(func=_cmd_consolidate)


def _cmd_consolidate(args: argparse.Namespace) -> int:
    from dqlray.runinfo import atomic_write_text

    df = consolidate(args.results_dir)
    if df.empty:
        raise DqlrayError(f"{args.results_dir}: no finished experiment (eval.json or summary.json) found")
    out = args.out or str(Path(args.results_dir) / "consolidated.csv")
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(out, buf.getvalue())
    print(df.drop(columns=["statement"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nVerdicts:")
    for name, text in zip(df["experiment"], df["statement"], strict=True):
        print(f"  {name}: {text or 'no verdict (evaluated before dqlray kept one)'}")
    print(f"\nwrote {out}")
    return 0
