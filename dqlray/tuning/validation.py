"""Every trial's per-bar validation returns, kept for the verdict's check against the search (issue 11, check 3).

A trial writes the returns after costs of its latest validation evaluation, ``(T_val, K)`` (one column per seed),
with the bars they were earned at, to ``val_returns.npz`` in its trial folder, replacing the previous file at every
evaluation: a trial stopped early (by ASHA, or by an error) keeps its last evaluation, so it is a column too.
:func:`validation_matrix` reads them back at the end of the sweep as one ``(T_val, N, K)`` array.

This module is the one place that knows the storage: packs of configurations (issue 14) move it to one file per
configuration by changing :func:`save_validation_returns` and :func:`validation_matrix` only.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dqlray.baselines import make_baselines
from dqlray.config import ExperimentConfig
from dqlray.errors import DqlrayError
from dqlray.evaluation import EvalResult, evaluate_policy
from dqlray.market import Market
from dqlray.runinfo import atomic_write_bytes
from dqlray.verdict import SearchRecord

VAL_FILE = "val_returns.npz"


def save_validation_returns(folder: str | Path, result: EvalResult) -> None:
    """Write ``result``'s per-period returns ``(T_val, K)`` and the bar each period ends at into ``folder``."""
    buf = io.BytesIO()
    np.savez(buf, returns=result.returns.T.astype(np.float64),
             time=np.asarray(result.time[1:], dtype="datetime64[ns]").astype(np.int64))
    atomic_write_bytes(Path(folder) / VAL_FILE, buf.getvalue())


class ValidationMatrix(NamedTuple):
    """The trials' validation returns on their common bars."""

    returns: np.ndarray  # (T_val, N, K): column j is trial_ids[j]
    time: np.ndarray  # (T_val,) datetime64[ns]: the bar each period ends at
    trial_ids: list[str]  # the columns, in the order asked for (trials without a file left out)
    missing: list[str]  # trials asked for that have no validation returns (they never finished an evaluation)


def validation_matrix(exp_dir: str | Path, trial_ids: Sequence[str]) -> ValidationMatrix:
    """Read the last validation returns of ``trial_ids`` from ``<exp_dir>/trial_<id>/val_returns.npz``.

    Contract: the result has one column per trial that has a file, in the order of ``trial_ids``, restricted to the
    bars every one of them has (all the same unless the search changed the split, e.g. through ``data.window``);
    trials without a file are listed in ``missing``. Every trial must have the same number of seeds K. A file that
    cannot be read, or no common bar, is one line naming the file.
    """
    exp = Path(exp_dir)
    cols: list[np.ndarray] = []
    times: list[np.ndarray] = []
    found: list[str] = []
    missing: list[str] = []
    for tid in trial_ids:
        path = exp / f"trial_{tid}" / VAL_FILE
        if not path.exists():
            missing.append(str(tid))
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                ret, t = z["returns"], z["time"].astype("datetime64[ns]")
        except (OSError, KeyError, ValueError) as e:
            raise DqlrayError(f"{path}: unreadable validation returns ({e})") from None
        if cols and ret.shape[1] != cols[0].shape[1]:
            raise DqlrayError(f"{path}: {ret.shape[1]} seeds, but trial {found[0]} has {cols[0].shape[1]}")
        cols.append(ret)
        times.append(t)
        found.append(str(tid))
    if not cols:
        return ValidationMatrix(np.empty((0, 0, 0)), np.empty(0, dtype="datetime64[ns]"), [], missing)
    common = times[0]
    for t in times[1:]:
        common = np.intersect1d(common, t)
    if not len(common):
        raise DqlrayError(f"{exp}: the trials' validation returns share no bar")
    aligned = [r[np.isin(t, common)] for r, t in zip(cols, times, strict=True)]
    return ValidationMatrix(np.stack(aligned, axis=1), common, found, missing)


def on_bars(result: EvalResult, time: np.ndarray) -> np.ndarray:
    """``result``'s first row of per-period returns on the periods ending at ``time`` (e.g. the benchmark's)."""
    t = np.asarray(result.time[1:], dtype="datetime64[ns]")
    keep = np.isin(t, time)
    if int(keep.sum()) != len(time):
        raise DqlrayError(f"{result.name}: its {result.part} bars do not cover the trials' validation bars")
    return result.returns[0][keep]


def search_record(exp_dir: str | Path, trial_ids: Sequence[str], winner: str, market: Market,
                  config: ExperimentConfig, n_trials: int | None = None) -> SearchRecord | None:
    """Check 3's inputs for the sweep in ``exp_dir``: the trials' validation returns, the benchmark's on the same
    bars (evaluated on the winner's ``market`` with its costs), and the winner's column.

    ``n_trials`` is N of the deflated Sharpe: every configuration and checkpoint the selection could choose among
    (default: the trials asked for). None when the winner has no validation returns (a sweep started before they
    were kept): the verdict then has no check 3.
    """
    vm = validation_matrix(exp_dir, trial_ids)
    if str(winner) not in vm.trial_ids:
        return None
    bench = make_baselines(market, config.env, seed=config.train.seed)[config.verdict.benchmark]
    res = evaluate_policy(bench, market, part="val", env=config.env, name=config.verdict.benchmark,
                          periods=config.train.periods_per_year)
    n = max(len(trial_ids), len(vm.trial_ids)) if n_trials is None else n_trials
    return SearchRecord(val_returns=vm.returns, val_benchmark_returns=on_bars(res, vm.time),
                        winner=vm.trial_ids.index(str(winner)), n_trials=n)
