"""Every configuration's per-bar validation returns, kept for the verdict's check against the search (issue 11,
check 3).

A configuration's record (:mod:`dqlray.tuning.members`) holds ``val_returns.npy``, the returns after costs ``(T_val,
K)`` (one column per seed) of the validation evaluation it is ranked by: the last one, or with ``train.select`` the
best one. A configuration stopped early by ASHA keeps the one it had, so it is a column too.
:func:`validation_matrix` reads them back at the end of the sweep as one ``(T_val, N, K)`` array; this module is
the one place that reads that storage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dqlray.baselines import make_baselines
from dqlray.config import ExperimentConfig
from dqlray.errors import DqlrayError
from dqlray.evaluation import EvalResult, evaluate_policy
from dqlray.market import Market
from dqlray.tuning.members import member_dir
from dqlray.verdict import SearchRecord

VAL_FILE = "val_returns.npy"
TIME_FILE = "val_time.npy"


class ValidationMatrix(NamedTuple):
    """The configurations' validation returns on their common bars."""

    returns: np.ndarray  # (T_val, N, K): column j is config_ids[j]
    time: np.ndarray | None  # (T_val,) datetime64[ns]: the bar each period ends at (None: records without bars)
    config_ids: list[str]  # the columns, in the order asked for (configurations without a file left out)
    missing: list[str]  # configurations asked for that have no validation returns (never finished an evaluation)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DqlrayError(f"{path}: unreadable validation returns ({e})") from None


MAX_SEED_LAYERS = 240
"""Most seed layers the validation matrix tiles to (the least common multiple of the configurations' seed counts)."""


def _same_seed_count(cols: list[np.ndarray], ids: list[str], exp_dir: str | Path) -> list[np.ndarray]:
    """Give every configuration the same number of seed columns when the search varied them (``train.num_seeds``,
    or ``train.ensemble``, whose one policy is one column): each one's columns repeated up to the least common
    multiple of the counts. Every statistic the verdict takes over seeds is a mean (the seed-averaged information
    ratio, the seed-averaged series), and a mean over columns repeated equally often is the mean over the
    originals, so each configuration is scored as it was ranked."""
    counts = sorted({c.shape[1] for c in cols})
    if len(counts) == 1:
        return cols
    layers = math.lcm(*counts)
    if layers > MAX_SEED_LAYERS:
        raise DqlrayError(f"{exp_dir}: the configurations' seed counts {counts} (for example {ids[0]}: "
                          f"{cols[0].shape[1]}) have no common multiple up to {MAX_SEED_LAYERS}; search "
                          f"train.num_seeds over fewer values")
    return [np.tile(c, (1, layers // c.shape[1])) for c in cols]


def validation_matrix(exp_dir: str | Path, config_ids: Sequence[str]) -> ValidationMatrix:
    """Read the validation returns of ``config_ids`` from ``<exp_dir>/configs/<id>/val_returns.npy`` (and the bars
    they end at, ``val_time.npy``).

    Contract: one column per configuration that has a file, in the order of ``config_ids``, restricted to the bars
    every one of them has (all the same unless the search changed the split, e.g. through ``data.window``); those
    without a file are listed in ``missing``. Configurations with different numbers of seed columns are brought to a
    common K (:func:`_same_seed_count`). A file that cannot be read, or no common bar, is one line naming the file.
    """
    cols: list[np.ndarray] = []
    times: list[np.ndarray | None] = []
    found: list[str] = []
    missing: list[str] = []
    for cid in map(str, config_ids):
        folder = member_dir(exp_dir, cid)
        path = folder / VAL_FILE
        if not path.exists():
            missing.append(cid)
            continue
        ret = _load(path)
        t = _load(folder / TIME_FILE).astype("datetime64[ns]") if (folder / TIME_FILE).exists() else None
        if ret.ndim != 2 or (t is not None and len(t) != len(ret)):
            raise DqlrayError(f"{path}: validation returns of shape {ret.shape}, expected (bars, seeds)"
                              + (f" with {len(t)} bars" if t is not None else ""))
        cols.append(ret.astype(np.float64))
        times.append(t)
        found.append(cid)
    if not cols:
        return ValidationMatrix(np.empty((0, 0, 0)), None, [], missing)
    cols = _same_seed_count(cols, found, exp_dir)
    if any(t is None for t in times):  # records without bars: the same validation part for all, or an error
        if len({len(r) for r in cols}) > 1:
            raise DqlrayError(f"{exp_dir}: the configurations' validation returns differ in length and carry no bars")
        return ValidationMatrix(np.stack(cols, axis=1), None, found, missing)
    common = times[0]
    for t in times[1:]:
        common = np.intersect1d(common, t)
    if not len(common):
        raise DqlrayError(f"{exp_dir}: the configurations' validation returns share no bar")
    aligned = [r[np.isin(t, common)] for r, t in zip(cols, times, strict=True)]
    return ValidationMatrix(np.stack(aligned, axis=1), common, found, missing)


def on_bars(result: EvalResult, time: np.ndarray | None) -> np.ndarray:
    """``result``'s first row of per-period returns on the periods ending at ``time`` (all of them if None)."""
    if time is None:
        return result.returns[0]
    t = np.asarray(result.time[1:], dtype="datetime64[ns]")
    keep = np.isin(t, time)
    if int(keep.sum()) != len(time):
        raise DqlrayError(f"{result.name}: its {result.part} bars do not cover the configurations' validation bars")
    return result.returns[0][keep]


def search_record(exp_dir: str | Path, config_ids: Sequence[str], winner: str, market: Market,
                  config: ExperimentConfig, n_trials: int | None = None) -> SearchRecord | None:
    """Check 3's inputs for the sweep in ``exp_dir``: the configurations' validation returns, the benchmark's on the
    same bars (evaluated on the winner's ``market`` with its costs), and the winner's column.

    ``n_trials`` is N of the deflated Sharpe: every configuration and checkpoint the selection could choose among
    (default: the configurations asked for). None when the winner has no validation returns (a sweep started before
    they were kept): the verdict then has no check 3.
    """
    vm = validation_matrix(exp_dir, config_ids)
    if str(winner) not in vm.config_ids:
        return None
    bench = make_baselines(market, config.env, seed=config.train.seed)[config.verdict.benchmark]
    res: EvalResult = evaluate_policy(bench, market, part="val", env=config.env, name=config.verdict.benchmark,
                                      periods=config.train.periods_per_year)
    bench_returns = on_bars(res, vm.time)
    if len(bench_returns) != vm.returns.shape[0]:
        raise DqlrayError(f"{exp_dir}: the configurations' validation returns have {vm.returns.shape[0]} bars, "
                          f"the winner's validation part {len(bench_returns)}")
    n = len(config_ids) if n_trials is None else n_trials
    return SearchRecord(val_returns=vm.returns, val_benchmark_returns=bench_returns,
                        winner=vm.config_ids.index(str(winner)), n_trials=n)
