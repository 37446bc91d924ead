"""One experiment end to end: run folder, training, the single test evaluation, and the saved results.

``results/<experiment>/`` holds ``config.yaml`` (resolved), ``meta.json`` (seeds, data file and hash, split dates,
git commit, package versions), ``metrics.csv`` (one row per episode), ``checkpoints/``, and after the test
evaluation ``eval.json`` (with the verdict against the benchmark, issue 11), the exact test series
(``test_series.npz``) and equity curves and positions as CSV.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dqlray.baselines import make_baselines
from dqlray.config import ExperimentConfig, load_config
from dqlray.data import OHLCV, data_hash, load_ohlcv
from dqlray.dqn import DQNLearner, evaluation_policy, resolve_device
from dqlray.errors import DqlrayError, WriteFailed
from dqlray.evaluation import EvalResult, evaluate_policy
from dqlray.formatting import fmt
from dqlray.lock import hold_folder
from dqlray.market import Market
from dqlray.notify import Notifier, RunNotifier
from dqlray.parts import build_market, make_learner
from dqlray.record import RECORD_FILE, record_of, save_record
from dqlray.runinfo import atomic_write_text, git_commit, package_versions, safe_argv, write_json
from dqlray.trainer import TrainResult, list_checkpoints, load_checkpoint, replay_bytes, train
from dqlray.verdict import SearchRecord, Verdict, record_verdict, run_dict, verdict_lines

HEADLINE = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar", "win_rate", "num_trades",
            "turnover", "exposure")


@dataclass
class RunOutcome:
    """A finished (or stopped) experiment."""

    run_dir: Path
    result: TrainResult
    evaluation: dict[str, Any] | None


def run_dir_of(config: ExperimentConfig) -> Path:
    """``<results_dir>/<experiment_name>``."""
    return Path(config.train.results_dir) / config.train.experiment_name


def write_run_header(run_dir: Path, config: ExperimentConfig, data: OHLCV, market: Market) -> None:
    """Write the resolved config and the metadata that make the run reproducible."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    def dates(part: str) -> list[str]:
        a, b = market.part(part)
        return [str(pd.Timestamp(data.time[a]).date()), str(pd.Timestamp(data.time[b - 1]).date())]

    write_json(run_dir / "meta.json", {
        "experiment": config.train.experiment_name,
        "seeds": list(config.train.seeds),
        "data_file": config.data.data_file,
        "data_hash": data_hash(data),
        "bars": len(data),
        "split": {p: {"bars": list(market.part(p)), "dates": dates(p)} for p in ("train", "val", "test")},
        "costs_bps": config.env.fee_bps + config.env.slippage_bps,
        "replay_buffer_bytes": replay_bytes(config),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "command": safe_argv(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """Per-episode metrics as CSV (rewritten whole, atomically, so a resumed run has no duplicate rows)."""
    if not history:
        return
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k, "") for k in keys})
    atomic_write_text(path, buf.getvalue())


def learner_from_checkpoint(config: ExperimentConfig, market: Market, checkpoint: str | Path) -> DQNLearner:
    """Rebuild the networks a run keeps for its test evaluation from one of its checkpoints: the trained ones, or
    with ``train.select`` those of the evaluation chosen by validation."""
    state = load_checkpoint(checkpoint)
    learner = make_learner(config, market)
    selected = (state.get("results") or [{}])[0].get("selected")
    learner.load_state_dict(selected["state"] if selected else state["learner"])
    return learner


def evaluate_all(learner: DQNLearner, market: Market, config: ExperimentConfig, part: str = "test"
                 ) -> tuple[dict[str, Any], dict[str, EvalResult]]:
    """Every seed's greedy policy (or, with ``train.ensemble``, the seeds' ensemble as one policy: one agent row)
    and every baseline over ``part`` with the same costs."""
    ec = config.env
    kw = dict(env=ec, periods=config.train.periods_per_year)
    policy, n_envs = evaluation_policy(learner, ensemble=config.train.ensemble)
    results = {"agent": evaluate_policy(policy, market, part=part, n_envs=n_envs, name="agent", **kw)}
    for name, pol in make_baselines(market, ec, seed=config.train.seed).items():
        results[name] = evaluate_policy(pol, market, part=part, name=name, **kw)
    return evaluation_dict(results, config, part, list(market.part(part))), results


def evaluation_dict(results: dict[str, EvalResult], config: ExperimentConfig, part: str, bars: list[int]
                    ) -> dict[str, Any]:
    """The ``eval.json`` layout of ``results``: the agent's metrics per seed and summarised, every baseline's."""
    ec = config.env
    return {
        "part": part,
        "bars": bars,
        "costs_bps": ec.fee_bps + ec.slippage_bps,
        "seeds": list(config.train.seeds),
        "policy": "ensemble" if config.train.ensemble else "seeds",
        "agent": {"per_seed": results["agent"].metrics, "summary": results["agent"].summary()},
        "baselines": {n: r.metrics[0] for n, r in results.items() if n != "agent"},
    }


def record_test_verdict(run_dir: Path, results: dict[str, EvalResult], market: Market, config: ExperimentConfig,
                 search: SearchRecord | None = None) -> Verdict:
    """Save the exact test series of ``results`` in ``run_dir`` (:mod:`dqlray.record`) and return its verdict.

    The one place a test evaluation becomes a verdict: single runs and sweeps call it right after their one test
    evaluation; walk-forward folds are stitched from the saved series.
    """
    rec = record_of(results, market, config.env.cost_rate)
    save_record(run_dir / RECORD_FILE, rec)
    return record_verdict(rec, config.verdict, periods=config.train.periods_per_year, search=search)


def save_curves(run_dir: Path, results: dict[str, EvalResult], part: str) -> None:
    """Equity curves and positions of the agent's seeds (and their mean) and of every baseline, as CSV. With
    ``train.ensemble`` the agent is one policy: its one column is ``agent_seed0``, as a one-seed run's."""
    agent = results["agent"]
    eq: dict[str, Any] = {"date": pd.DatetimeIndex(agent.time).strftime("%Y-%m-%d %H:%M:%S")}
    pos: dict[str, Any] = {"date": eq["date"][:-1]}
    for k in range(agent.equity.shape[0]):
        eq[f"agent_seed{k}"] = agent.equity[k]
        pos[f"agent_seed{k}"] = agent.positions[k]
    eq["agent_mean"] = agent.equity.mean(axis=0)
    for name, r in results.items():
        if name != "agent":
            eq[name] = r.equity[0]
            pos[name] = r.positions[0]
    buf = io.StringIO()
    pd.DataFrame(eq).to_csv(buf, index=False, float_format="%.8g")
    atomic_write_text(run_dir / f"equity_{part}.csv", buf.getvalue())
    buf = io.StringIO()
    pd.DataFrame(pos).to_csv(buf, index=False, float_format="%.4g")
    atomic_write_text(run_dir / f"positions_{part}.csv", buf.getvalue())


def format_metrics_table(evaluation: dict[str, Any]) -> str:
    """The "Final Metrics" block: agent mean ± spread over seeds next to every baseline."""
    one = evaluation.get("policy") == "ensemble"  # one policy: no spread over seeds to show
    summ = evaluation["agent"]["summary"]
    header = f"{'policy':<22}" + "".join(f"{k:>14}" for k in HEADLINE)
    lines = [header, "-" * len(header)]
    cells = "".join(f"{_fmt(summ[k]['mean'], k) + ('' if one else '±' + _fmt(summ[k]['std'], k, short=True)):>14}"
                    for k in HEADLINE)
    lines.append(f"{'agent (ensemble)' if one else 'agent (mean±sd)':<22}{cells}")
    for name, m in evaluation["baselines"].items():
        lines.append(f"{name:<22}" + "".join(f"{_fmt(m[k], k):>14}" for k in HEADLINE))
    return "\n".join(lines)


def _fmt(v: float, key: str, short: bool = False) -> str:
    # A cell of the terminal tables: plain text (ASCII minus, no separators) for grep, "nan" when missing.
    return fmt(v, "int" if key == "num_trades" else "ratio" if short else "float3", missing="nan", plain=True)


def run_experiment(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    notifier: RunNotifier | None = None,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    out: Callable[[str], None] = print,
) -> RunOutcome:
    """Train, checkpoint, evaluate once on the test part, and save everything under the run folder.

    The run folder is locked for the whole run (:func:`dqlray.lock.hold_folder`): a second run of the same
    experiment is refused with one line instead of overwriting this one's results.
    """
    data = load_ohlcv(config.data.data_file)
    market = build_market(config, data)
    resolve_device(config.train.device)  # refuse an unavailable device before anything is written
    run_dir = run_dir_of(config)
    with hold_folder(run_dir, flag="--experiment_name", out=out):
        return _run_locked(config, data, market, run_dir, resume=resume, notifier=notifier, progress=progress,
                           should_stop=should_stop, out=out)


def _run_locked(config: ExperimentConfig, data: OHLCV, market: Market, run_dir: Path, *, resume: bool,
                notifier: Any, progress: bool | None, should_stop: Callable[[], bool] | None,
                out: Callable[[str], None]) -> RunOutcome:
    ckpt_dir = run_dir / "checkpoints"
    state = None
    if resume:
        if not list_checkpoints(ckpt_dir):
            raise DqlrayError(f"{run_dir}: nothing to resume (no checkpoint in {ckpt_dir})")
        saved = load_config(run_dir / "config.yaml")
        if saved.to_dict() != config.to_dict():
            diff = [f"{s}.{k}" for s, sec in config.to_dict().items() for k, v in sec.items()
                    if saved.to_dict()[s][k] != v]
            raise DqlrayError(f"{run_dir}: --resume with a different config ({', '.join(diff)}); "
                              "resume with the saved settings or start a new --experiment_name")
        state = load_checkpoint(ckpt_dir)
    elif (run_dir / "metrics.csv").exists() or list_checkpoints(ckpt_dir):
        raise DqlrayError(f"{run_dir} already holds a run; use --resume to continue it, or another --experiment_name")
    if not resume:
        write_run_header(run_dir, config, data, market)
    tc = config.train
    notifier = notifier or RunNotifier(Notifier(), tc.experiment_name)  # a no-op one by default
    notifier.start(agent_type=config.agent.agent_type, episodes=tc.episodes, data_file=config.data.data_file)
    history: list[dict[str, Any]] = list(state["history"]) if state is not None else []

    def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
        history.append(metrics)
        write_metrics_csv(run_dir / "metrics.csv", history)
        notifier.progress(episode=metrics["episodes"], total=tc.episodes, mean_reward=metrics["episode_return"],
                          loss=metrics["loss"], epsilon=metrics["epsilon"])
        if checkpoint is not None and metrics["episodes"] % tc.checkpoint_every == 0:
            notifier.checkpoint(episode=metrics["episodes"], path=checkpoint)

    try:
        result = train(config, market, report=report, checkpoint_dir=ckpt_dir, resume_from=state,
                       progress=progress, should_stop=should_stop)
    except WriteFailed as e:
        if list_checkpoints(ckpt_dir):
            raise WriteFailed(f"{e}; once there is room, continue with --resume") from None
        raise
    if result.stopped_early:
        out(f"Stopped at episode {result.final.get('episodes')}; resume with --resume")
        return RunOutcome(run_dir, result, None)
    kept = result.kept_learner()  # the trained networks, or those chosen by validation (train.select)
    evaluation, curves = evaluate_all(kept, result.market, config, "test")
    # a resumed run that had already finished writes no new checkpoint: its model is the newest one
    evaluation["model_path"] = result.last_checkpoint or str(list_checkpoints(ckpt_dir)[-1])
    if result.member is not None and result.member.selected is not None:
        evaluation["selected"] = {"by": tc.select, "episodes": result.member.selected["episodes"],
                                  "among_evaluations": len(result.member.evaluations)}
    evaluation["verdict"] = run_dict(record_test_verdict(run_dir, curves, result.market, config))
    write_json(run_dir / "eval.json", evaluation)
    save_curves(run_dir, curves, "test")
    _, val_curves = evaluate_all(kept, result.market, config, "val")
    save_curves(run_dir, val_curves, "val")
    out("\nFinal Metrics (test split, costs {:.1f} bps, {}{} seeds)".format(
        evaluation["costs_bps"], "one ensemble of " if tc.ensemble else "", len(tc.seeds)))
    out(format_metrics_table(evaluation))
    out("")
    for line in verdict_lines(evaluation["verdict"]):
        out(line)
    out(f"\nResults: {run_dir}")
    return RunOutcome(run_dir, result, evaluation)


def evaluate_run(run_dir: str | Path, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate a finished run's last checkpoint on its test part again (deterministic) and print the table."""
    rd = Path(run_dir)
    if not (rd / "config.yaml").exists():
        raise DqlrayError(f"{rd}: not a run folder (no config.yaml)")
    config = load_config(rd / "config.yaml")
    data = load_ohlcv(config.data.data_file)
    meta = json.loads((rd / "meta.json").read_text())
    if meta.get("data_hash") != data_hash(data):
        raise DqlrayError(f"{config.data.data_file}: data hash {data_hash(data)} differs from the run's "
                          f"{meta.get('data_hash')}: the file changed since training")
    market = build_market(config, data)
    ckpts = list_checkpoints(rd / "checkpoints")
    if not ckpts:
        raise DqlrayError(f"{rd}: no checkpoint to evaluate")
    learner = learner_from_checkpoint(config, market, ckpts[-1])
    evaluation, curves = evaluate_all(learner, market, config, "test")
    rec = record_of(curves, market, config.env.cost_rate)
    evaluation["verdict"] = run_dict(record_verdict(rec, config.verdict, periods=config.train.periods_per_year))
    out(format_metrics_table(evaluation))
    out("")
    for line in verdict_lines(evaluation["verdict"]):
        out(line)
    return evaluation
