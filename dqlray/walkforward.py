"""Walk-forward evaluation (issue 11): N folds in time order, each trained (or tuned) on its own past only and
tested once on its own test block; the test blocks stitched into one out-of-sample record with one verdict.

The folds come from the config (``data.walk_forward``; :func:`dqlray.parts.fold_splits`): an expanding training
window, a validation block, a test block, an embargo between the parts, the test blocks following each other to the
last bar. Fold i's run is an ordinary run (or sweep) of the config with ``data.fold = i``.

One experiment folder, one subfolder per fold::

    <results>/<experiment>/walk_forward.json   the plan (folds, bars, dates) and the settings it was started with
    <results>/<experiment>/fold_0/ ... fold_<N-1>/   each a complete run folder (or sweep folder)
    <results>/<experiment>/summary.json        once every fold is done: the stitched test evaluation and verdict,
                                               and each fold's winner, config and own verdict
    <results>/<experiment>/test_series.npz, equity_test.csv, positions_test.csv   the stitched test series

A fold that finished (its ``eval.json`` or ``summary.json`` exists) is never run again; ``--resume`` continues the
others and stitches. ``--fold I`` runs one fold only, so several drivers (or a SLURM array) can take one each; a
final ``--resume`` stitches them. The stitched verdict applies checks 1 and 2 to the stitched test series (each fold
a segment that starts flat, as its evaluation did); each fold keeps its own check 3 (:mod:`dqlray.verdict`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dqlray.config import ExperimentConfig
from dqlray.data import OHLCV, data_hash, load_ohlcv
from dqlray.errors import ConfigError, DqlrayError
from dqlray.lock import hold_folder
from dqlray.parts import fold_splits
from dqlray.record import RECORD_FILE, load_record, results_of, save_record, stitch
from dqlray.runinfo import git_commit, package_versions, write_json
from dqlray.verdict import record_verdict, run_dict, verdict_lines

WF_FILE = "walk_forward.json"
SUMMARY_FILE = "summary.json"


def fold_dir(exp: Path, fold: int) -> Path:
    """The folder of fold ``fold`` inside the walk-forward experiment folder ``exp``."""
    return exp / f"fold_{fold}"


def fold_plan(config: ExperimentConfig, data: OHLCV) -> list[dict[str, Any]]:
    """Every fold's bars and dates of its train, validation and test parts (a one-line error if too short)."""
    if config.data.fold is not None:
        raise ConfigError(f"data.fold={config.data.fold}: the walk-forward driver sets each fold's; to run one fold "
                          "of the experiment use --fold")
    out = []
    for i, split in enumerate(fold_splits(config, data)):
        parts = {}
        for name in ("train", "val", "test"):
            a, b = split.part(name)
            parts[name] = {"bars": [a, b], "dates": [str(pd.Timestamp(data.time[a]).date()),
                                                     str(pd.Timestamp(data.time[b - 1]).date())]}
        out.append({"fold": i, **parts})
    return out


def folds_to_run(n_folds: int, only: int | None) -> list[int]:
    """``[only]``, checked against the number of folds, or every fold in time order."""
    if only is None:
        return list(range(n_folds))
    if not 0 <= only < n_folds:
        raise ConfigError(f"--fold {only}: the experiment has folds 0 .. {n_folds - 1}")
    return [only]


def begin(exp: Path, plan_record: dict[str, Any], *, resume: bool, joining: bool,
          same: Callable[[dict[str, Any]], str | None]) -> dict[str, Any]:
    """Write the experiment's ``walk_forward.json`` on the first start, or check this start against it.

    ``joining``: a ``--fold`` driver may start while another has created the experiment. ``same(stored)`` returns
    None when this start's settings are the stored ones, else the first difference as text (the start is refused).
    """
    path = exp / WF_FILE
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DqlrayError(f"{path}: unreadable ({e})") from None
        if not (resume or joining):
            raise DqlrayError(f"{exp} already holds a walk-forward experiment; use --resume to continue it, or "
                              "another experiment name")
        if stored.get("data_hash") != plan_record.get("data_hash"):
            raise DqlrayError(f"data hash {plan_record.get('data_hash')} differs from the experiment's "
                              f"{stored.get('data_hash')} ({path}): the file changed since the experiment started")
        diff = same(stored)
        if diff is not None:
            raise ConfigError(f"{path}: this start differs from the experiment's settings ({diff}); resume without "
                              "that flag, or start a new experiment name")
        return stored
    if resume:
        raise DqlrayError(f"{exp}: no walk-forward experiment to resume (no {WF_FILE})")
    write_json(path, plan_record)
    return plan_record


def stitch_folds(exp: Path, config: ExperimentConfig, folds: Sequence[dict[str, Any]], *, tuned: bool,
                 out: Callable[[str], None], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stitch the folds' saved test series, compute the verdict on them, write the experiment's summary.

    ``folds``: per fold (in time order) what the summary shows of it, with its own ``verdict``. The stitched record
    and its curves go to ``exp``; the summary's ``test`` has the layout of ``eval.json`` (metrics recomputed over
    the stitched bars), its ``verdict`` the walk-forward verdict (checks 1 and 2 stitched; each fold's check 3 in
    ``folds``).
    """
    from dqlray.workflow import evaluation_dict, format_metrics_table, save_curves

    with hold_folder(exp, out=out):
        records = [load_record(fold_dir(exp, f["fold"]) / RECORD_FILE) for f in folds]
        rec = stitch(records)
        save_record(exp / RECORD_FILE, rec)
        periods = config.train.periods_per_year
        results = results_of(rec, "test", periods)
        bars = [folds[0]["test"]["bars"][0], folds[-1]["test"]["bars"][1]]
        evaluation = evaluation_dict(results, config, "test", bars)
        v = record_verdict(rec, config.verdict, periods=periods, fold_verdicts=[f.get("verdict") for f in folds],
                           tuned=tuned)
        save_curves(exp, results, "test")
        summary = {"experiment": exp.name, "kind": "walk_forward", "tuned": tuned,
                   "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "n_folds": len(folds),
                   "segments": list(rec.segments), "test": evaluation,
                   "verdict": v.to_dict() if tuned else run_dict(v), "folds": list(folds),
                   **(extra or {}), "git_commit": git_commit(), "versions": package_versions()}
        write_json(exp / SUMMARY_FILE, summary)
    out(f"\nWalk-forward: {len(folds)} test blocks stitched ({rec.bars} bars, "
        f"{folds[0]['test']['dates'][0]} to {folds[-1]['test']['dates'][1]}), costs {evaluation['costs_bps']:.1f} bps:")
    out(format_metrics_table(evaluation))
    out("")
    for line in verdict_lines(summary["verdict"]):
        out(line)
    return summary


def fold_entry(plan: dict[str, Any], fold_path: Path, **more: Any) -> dict[str, Any]:
    """What the walk-forward summary keeps of one fold: its parts, folder and ``more`` (its verdict, winner...)."""
    return {**plan, "dir": fold_path.name, **more}


# ------------------------------------------------------------------------------------------------ single runs


@dataclass
class WalkForwardOutcome:
    """A walk-forward experiment after this call: stitched (``summary``), or stopped / partly done."""

    exp_dir: Path
    summary: dict[str, Any] | None
    stopped: bool = False


def run_walk_forward(
    config: ExperimentConfig, *, resume: bool = False, only_fold: int | None = None, notifier: Any = None,
    progress: bool | None = None, should_stop: Callable[[], bool] | None = None, out: Callable[[str], None] = print,
) -> WalkForwardOutcome:
    """Train and test every fold of ``config`` (``data.walk_forward`` folds) as its own run, then stitch them.

    Folds run one after the other; a finished fold is never run again, a stopped one continues from its checkpoint
    (one stopped before its first checkpoint starts again). ``only_fold`` runs that fold alone and does not stitch.
    """
    from dqlray.trainer import list_checkpoints
    from dqlray.workflow import run_dir_of, run_experiment

    data = load_ohlcv(config.data.data_file)
    plan = fold_plan(config, data)
    exp = run_dir_of(config)
    record = {"kind": "run", "experiment": config.train.experiment_name, "config": config.to_dict(), "folds": plan,
              "data_file": config.data.data_file, "data_hash": data_hash(data),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit()}

    def same(stored: dict[str, Any]) -> str | None:
        diff = [f"{s}.{k}" for s, sec in config.to_dict().items() for k, v in sec.items()
                if stored.get("config", {}).get(s, {}).get(k) != v]
        return ", ".join(diff) or None

    todo = folds_to_run(len(plan), only_fold)
    begin(exp, record, resume=resume, joining=only_fold is not None, same=same)
    if (exp / SUMMARY_FILE).exists():
        out(f"{exp}: every fold finished and was stitched before; see {exp / SUMMARY_FILE}")
        return WalkForwardOutcome(exp, json.loads((exp / SUMMARY_FILE).read_text()))
    for i in todo:
        fd = fold_dir(exp, i)
        if (fd / "eval.json").exists():
            out(f"Fold {i}: finished before, not run again")
            continue
        cont = bool(list_checkpoints(fd / "checkpoints"))
        if not cont:
            (fd / "metrics.csv").unlink(missing_ok=True)  # stopped before its first checkpoint: it starts again
        t = plan[i]["test"]["dates"]
        out(f"\nFold {i} of {len(plan)}: train {plan[i]['train']['dates'][0]} to {plan[i]['train']['dates'][1]}, "
            f"validation {plan[i]['val']['dates'][0]} to {plan[i]['val']['dates'][1]}, test {t[0]} to {t[1]}"
            + (" (continued)" if cont else ""))
        fc = config.replace({"data": {"fold": i}, "train": {"results_dir": str(exp), "experiment_name": fd.name}})
        outcome = run_experiment(fc, resume=cont, notifier=notifier, progress=progress, should_stop=should_stop,
                                 out=out)
        if outcome.evaluation is None:
            return WalkForwardOutcome(exp, None, stopped=True)
    done = [i for i in range(len(plan)) if (fold_dir(exp, i) / "eval.json").exists()]
    if only_fold is not None or len(done) < len(plan):
        out(f"\n{len(done)} of {len(plan)} folds finished; when all are, stitch them with --resume")
        return WalkForwardOutcome(exp, None)
    folds = []
    for i in range(len(plan)):
        ev = json.loads((fold_dir(exp, i) / "eval.json").read_text())
        folds.append(fold_entry(plan[i], fold_dir(exp, i), verdict=ev.get("verdict"),
                                test_sharpe=ev["agent"]["summary"]["sharpe"]["mean"],
                                benchmark_sharpe=ev["baselines"].get(config.verdict.benchmark, {}).get("sharpe"),
                                model_path=ev.get("model_path")))
    summary = stitch_folds(exp, config, folds, tuned=False, out=out,
                           extra={"data_file": config.data.data_file, "data_hash": data_hash(data)})
    out(f"\nResults: {exp}")
    return WalkForwardOutcome(exp, summary)
