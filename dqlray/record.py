"""The exact per-bar record of one test evaluation: what the verdict reads, and what walk-forward folds stitch.

``test_series.npz``, next to a run's ``eval.json`` or a sweep's ``summary.json``, holds for the agent (one row per
seed) and every baseline (one row) the per-period returns after costs, the held positions and the traded notional,
with the bars' times, the market return each period earns and the cost rate. The CSV curves are rounded for
reading; this file is exact, so a verdict recomputed from it, or from folds stitched together, is the same verdict.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dqlray.errors import DqlrayError
from dqlray.evaluation import EvalResult
from dqlray.market import Market
from dqlray.metrics import summarize
from dqlray.runinfo import atomic_write_bytes

RECORD_FILE = "test_series.npz"


class PolicyRecord(NamedTuple):
    """One policy's pass over the bars: one row per environment (per seed for the agent)."""

    returns: np.ndarray  # (N, T) per-period simple returns after costs
    positions: np.ndarray  # (N, T) position held over each period
    traded: np.ndarray  # (N, T) traded notional / value at the start of each period


class EvalRecord(NamedTuple):
    """The agent's and every baseline's per-bar results over the same test bars."""

    time: np.ndarray  # (T + 1,) datetime64[ns]: the bars of the equity curve
    ret_next: np.ndarray  # (T,) the market return each period earns (what a long position earns before costs)
    cost_rate: float  # (fee_bps + slippage_bps) * 1e-4
    policies: dict[str, PolicyRecord]  # "agent" first, then the baselines
    segments: tuple[int, ...] = (0,)  # first period of each walk-forward fold (one segment: one split)

    @property
    def bars(self) -> int:
        """Periods T."""
        return len(self.ret_next)


def record_of(results: Mapping[str, EvalResult], market: Market, cost_rate: float) -> EvalRecord:
    """The record of :func:`dqlray.workflow.evaluate_all`'s results on ``market`` (all over the same part).

    :func:`dqlray.evaluation.evaluate_policy` decides at bars ``start .. stop - 2`` of the part and each decision
    earns the next bar's return, so period i earns ``ret_next[start + i]``.
    """
    agent = results["agent"]
    a, b = market.part(agent.part)
    policies = {name: PolicyRecord(r.returns.copy(), r.positions.copy(), r.traded.copy()) for name, r in results.items()}
    return EvalRecord(time=np.asarray(agent.time, dtype="datetime64[ns]"),
                      ret_next=np.asarray(market.ret_next[a:b - 1], dtype=np.float64), cost_rate=float(cost_rate),
                      policies=policies)


def save_record(path: str | Path, rec: EvalRecord) -> None:
    """Write ``rec`` atomically as an ``.npz`` file (a full disk raises one line and keeps the old file)."""
    arrays: dict[str, np.ndarray] = {"time": rec.time.astype("datetime64[ns]").astype(np.int64), "ret_next": rec.ret_next,
                                     "cost_rate": np.array(rec.cost_rate), "segments": np.array(rec.segments),
                                     "names": np.array(list(rec.policies))}
    for name, p in rec.policies.items():
        for field, arr in zip(PolicyRecord._fields, p, strict=True):
            arrays[f"{name}.{field}"] = arr
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_record(path: str | Path) -> EvalRecord:
    """Read a record written by :func:`save_record`; a missing or unreadable file is one line naming it."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            names = [str(n) for n in z["names"]]
            policies = {n: PolicyRecord(*(z[f"{n}.{f}"] for f in PolicyRecord._fields)) for n in names}
            return EvalRecord(time=z["time"].astype("datetime64[ns]"), ret_next=z["ret_next"],
                              cost_rate=float(z["cost_rate"]), policies=policies,
                              segments=tuple(int(s) for s in z["segments"]))
    except FileNotFoundError:
        raise DqlrayError(f"{p}: missing (the exact test series of the evaluation)") from None
    except (OSError, KeyError, ValueError) as e:
        raise DqlrayError(f"{p}: unreadable ({e})") from None


def stitch(records: Sequence[EvalRecord]) -> EvalRecord:
    """Walk-forward test blocks one after the other: one record whose ``segments`` start each fold.

    The curve's bars are the first record's, then each next record's after its start (which is the bar after the
    previous block's end). Every record must hold the same policies with the same rows and the same cost rate.
    """
    if not records:
        raise ValueError("stitch: no records")
    first = records[0]
    for i, r in enumerate(records[1:], start=1):
        if r.cost_rate != first.cost_rate:
            raise DqlrayError(f"fold {i}: cost rate {r.cost_rate} differs from fold 0's {first.cost_rate}")
        if {n: p.returns.shape[0] for n, p in r.policies.items()} != {n: p.returns.shape[0]
                                                                         for n, p in first.policies.items()}:
            raise DqlrayError(f"fold {i}: other policies or seeds than fold 0")
        if r.time[0] <= records[i - 1].time[-1]:
            raise DqlrayError(f"fold {i}: its test bars start before fold {i - 1}'s end")
    starts = np.cumsum([0] + [r.bars for r in records[:-1]])
    policies = {name: PolicyRecord(*(np.concatenate([getattr(r.policies[name], f) for r in records], axis=1)
                                     for f in PolicyRecord._fields)) for name in first.policies}
    return EvalRecord(time=np.concatenate([first.time] + [r.time[1:] for r in records[1:]]),
                      ret_next=np.concatenate([r.ret_next for r in records]), cost_rate=first.cost_rate,
                      policies=policies, segments=tuple(int(s) for s in starts))


def results_of(rec: EvalRecord, part: str, periods: int) -> dict[str, EvalResult]:
    """The record as :class:`EvalResult` objects (equity from the returns, metrics recomputed), e.g. stitched folds."""
    out = {}
    for name, p in rec.policies.items():
        equity = np.concatenate([np.ones((p.returns.shape[0], 1)), np.cumprod(1.0 + p.returns, axis=1)], axis=1)
        metrics = [summarize(p.returns[k], p.positions[k], p.traded[k], periods) for k in range(p.returns.shape[0])]
        out[name] = EvalResult(name=name, part=part, time=rec.time, equity=equity, positions=p.positions,
                               traded=p.traded, metrics=metrics)
    return out
