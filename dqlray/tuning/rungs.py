"""ASHA for configurations, not trials: one rung table for the whole sweep (issue 14).

Tune's schedulers stop whole trials, and a packed trial trains many configurations; so the sweep keeps its own
table of asynchronous successive halving (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning"),
with the semantics of Ray's ``AsyncHyperBandScheduler`` (``ray.tune.schedulers.async_hyperband._Bracket``, one
bracket): rungs at ``grace_period * reduction_factor**k`` episodes up to ``max_t``; a configuration reaching a rung
records its value there and is stopped when the value is below the ``1 - 1/reduction_factor`` quantile of the values
recorded at that rung before it (so the first configurations at a rung are never stopped). Configurations of one
pack reach a rung in the same episode and are decided in the order given, as Ray decides trials in the order their
results arrive.

Every configuration of every pack is decided by one table: a small Ray actor (:class:`RungServer`) that the
trainables call at the rung episodes only. It writes the table to the experiment folder (atomically) after every
decision, so a resumed sweep carries on with the same cut-offs, and it remembers every decision, so a pack retried
from a checkpoint after a crash gets the same answers again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dqlray.runinfo import atomic_write_text

RUNGS_FILE = "rungs.json"
NAMESPACE = "dqlray"  # the actor's, so that trials find it whatever namespace their worker runs in


def milestones(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """ASHA's rungs in episodes, ascending: as Ray's ``_Bracket`` places them (``max_t`` may be one)."""
    n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(max(n, 0))]


def budget_share(grace_period: int, reduction_factor: int, max_t: int) -> float:
    """The share of the full budget an average configuration trains under ASHA: all of them to the first rung,
    ``1/reduction_factor`` of them on to the next, and so on (rungs at :func:`milestones`, the last stretch to
    ``max_t``). 1/3 for the default sweep (rungs at 4 and 12 of 24 episodes, reduction factor 3)."""
    ends = [*milestones(grace_period, reduction_factor, max_t), max_t]
    done, share, start = 0.0, 1.0, 0
    for end in ends:
        done += share * (end - start)
        start, share = end, share / reduction_factor
    return done / max_t


class RungTable:
    """The values recorded at each rung, and every stop-or-continue decision made."""

    def __init__(self, grace_period: int, reduction_factor: int, max_t: int) -> None:
        self.grace_period, self.reduction_factor, self.max_t = grace_period, reduction_factor, max_t
        self.rungs = milestones(grace_period, reduction_factor, max_t)
        self.recorded: dict[int, dict[str, float]] = {m: {} for m in self.rungs}
        self.decisions: dict[int, dict[str, bool]] = {m: {} for m in self.rungs}

    def cutoff(self, milestone: int) -> float | None:
        """The value a configuration must reach at ``milestone`` to go on (None while nothing is recorded)."""
        values = list(self.recorded[milestone].values())
        if not values:
            return None
        finite = [v for v in values if not math.isnan(v)]  # np.nanpercentile's answer, without its warning
        return float(np.percentile(finite, (1 - 1 / self.reduction_factor) * 100)) if finite else math.nan

    def decide(self, member: str, episode: int, value: float | None) -> bool:
        """Whether ``member``, at ``episode`` with rung value ``value``, stops (True) or goes on.

        Only the highest rung at or below ``episode`` that has not recorded ``member`` is consulted, as Ray does; a
        decision already made for ``member`` at that rung is returned again (a retried pack asks twice).
        """
        for m in reversed(self.rungs):
            if episode < m:
                continue
            if member in self.decisions[m]:
                if m == episode:
                    return self.decisions[m][member]
                continue
            if value is None:  # Ray records nothing when the metric is missing, and decides at the next result
                return False
            cut = self.cutoff(m)
            stop = bool(cut is not None and not math.isnan(value) and value < cut)
            self.decisions[m][member] = stop
            self.recorded[m][member] = float(value)
            return stop
        return False

    def decide_many(self, items: Sequence[tuple[str, int, float | None]]) -> list[bool]:
        """:meth:`decide` for each ``(member, episode, value)`` in order."""
        return [self.decide(*item) for item in items]

    def state(self) -> dict[str, Any]:
        """Plain data (JSON): the settings, the recorded values and the decisions of every rung."""
        return {"grace_period": self.grace_period, "reduction_factor": self.reduction_factor, "max_t": self.max_t,
                "rungs": {str(m): {"recorded": self.recorded[m], "decisions": self.decisions[m]}
                          for m in self.rungs}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RungTable:
        """The table :meth:`state` describes."""
        table = cls(int(state["grace_period"]), int(state["reduction_factor"]), int(state["max_t"]))
        for m, rung in state["rungs"].items():
            table.recorded[int(m)] = {k: float(v) for k, v in rung["recorded"].items()}
            table.decisions[int(m)] = {k: bool(v) for k, v in rung["decisions"].items()}
        return table

    def save(self, path: Path) -> None:
        """Write :meth:`state` to ``path`` atomically (a NaN value, which Ray records too, is written as ``NaN``,
        which Python's JSON reads back)."""
        atomic_write_text(path, json.dumps(self.state()))

    @classmethod
    def load_or_new(cls, path: Path, grace_period: int, reduction_factor: int, max_t: int) -> RungTable:
        """The table saved at ``path`` (a resumed sweep), or a new one."""
        if path.exists():
            table = cls.from_state(json.loads(path.read_text()))
            if (table.grace_period, table.reduction_factor, table.max_t) == (grace_period, reduction_factor, max_t):
                return table
        return cls(grace_period, reduction_factor, max_t)


class RungServer:
    """The sweep's one rung table, served to every trial as a Ray actor (no CPU reserved), saved after each call."""

    def __init__(self, path: str, grace_period: int, reduction_factor: int, max_t: int) -> None:
        self.path = Path(path)
        self.table = RungTable.load_or_new(self.path, grace_period, reduction_factor, max_t)

    def decide_many(self, items: list[tuple[str, int, float | None]]) -> list[bool]:
        """Decide in order, then save the table."""
        out = self.table.decide_many(items)
        self.table.save(self.path)
        return out

    def state(self) -> dict[str, Any]:
        """The table as plain data."""
        return self.table.state()


def rung_server(name: str) -> Any:
    """The running rung actor called ``name`` (from inside a trial)."""
    import ray

    return ray.get_actor(name, namespace=NAMESPACE)


def start_rung_server(name: str, path: Path, grace_period: int, reduction_factor: int, max_t: int) -> Any:
    """Start the sweep's rung actor on the driver's node (the experiment folder is written from there)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    actor = ray.remote(num_cpus=0, max_restarts=-1)(RungServer).options(
        name=name, namespace=NAMESPACE, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        str(path), grace_period, reduction_factor, max_t)
    ray.get(actor.state.remote())  # started, and the saved table read
    return actor
