"""The sweep's search: configurations asked of Optuna (or drawn at random, or read off the grid), handed to Ray Tune
as packs, and each configuration's own result told back (issue 14).

:class:`PackSearcher` is a Tune ``Searcher``: every trial it suggests is a pack, ``{"pack": [{"id", "params"}, ...]}``.
Optuna is used through ``ask``/``tell`` directly (not Ray's ``OptunaSearch``), so the sweep controls what Optuna is
told: each configuration's validation values as intermediate values, and when it leaves its pack its final value
(complete), or, if ASHA stopped it, either its last value as complete (what ``OptunaSearch`` does) or pruned, as
``sweep.tell_stopped`` says. Random search is Optuna's ``RandomSampler`` through the same path; grid search walks
the grid.

Packs are formed a wave at a time: when a trial slot is free, the searcher asks for as many configurations as the
free slots' packs hold, then splits them into packs whose members can share one (:func:`dqlray.pack.group_configs`:
equal group keys; similar widths and batch sizes together, cut where one more pack costs less than padding; with
ASHA, members count for the share of the budget they train on average, so a wave makes fewer, larger packs whose
overhead the survivors share), and queues the longest packs first. The searcher's whole state (the Optuna study
included) is saved and restored with the sweep.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.search import Searcher

from dqlray.pack import DIVERGED, FINISHED, STOPPED, group_configs, pack_cost
from dqlray.tuning.members import members_of
from dqlray.tuning.rungs import budget_share
from dqlray.tuning.space import SweepFile, encode, expected_configs, grid_points, trial_config


def optuna_space(sf: SweepFile) -> dict[str, Any]:
    """The file's ``search`` section as Optuna distributions (choices that are lists travel as JSON strings)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, spec in sf.search.items():
        kind, args = next(iter(spec.items()))
        if kind == "loguniform":
            out[key] = FloatDistribution(float(args[0]), float(args[1]), log=True)
        elif kind == "uniform":
            out[key] = FloatDistribution(float(args[0]), float(args[1]))
        elif kind == "randint":
            out[key] = IntDistribution(int(args[0]), int(args[1]))
        else:
            out[key] = CategoricalDistribution([encode(v) for v in args])
    return out


class PackSearcher(Searcher):
    """Suggest packs of ``pack_size`` configurations; tell Optuna each configuration's own result.

    Args:
        sweep_file: the sweep (base config, space or grid, settings: search method, seed, metric, tell_stopped).
        pack_size: configurations per pack (resolved: an integer).
        max_concurrent: packs running at once.
    """

    member_share: float = 1.0
    """The share of the budget a member counts for when packs are cut (set in ``__init__``; this default is what a
    searcher pickled before it existed, resumed, cuts with)."""

    def __init__(self, sweep_file: SweepFile, pack_size: int, max_concurrent: int) -> None:
        sw = sweep_file.sweep
        # No metric for Tune to check in every result: a pack's results hold one per configuration (``members``).
        super().__init__(metric=None, mode="max")
        self.sweep_file = sweep_file
        self.pack_size = int(pack_size)
        self.max_concurrent = int(max_concurrent)
        self.n_configs = expected_configs(sweep_file)
        # under ASHA most members leave early and the pack runs on for the survivors: their compute counts for the
        # share of the budget an average configuration trains (bench/README.md: the default 27-configuration sweep
        # makes 2 or 3 packs rather than 4 or 5, and no pack waits for a second round of slots)
        self.member_share = (budget_share(sw.grace_period, sw.reduction_factor, sweep_file.base.train.episodes)
                             if sw.scheduler == "asha" else 1.0)
        self.study: Any = None
        self.space: dict[str, Any] = {}
        if sw.search in ("optuna", "random"):
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = (optuna.samplers.TPESampler(seed=sw.seed) if sw.search == "optuna"
                       else optuna.samplers.RandomSampler(seed=sw.seed))
            self.study = optuna.create_study(direction="maximize", sampler=sampler)
            self.space = optuna_space(sweep_file)
        self.grid = grid_points(sweep_file) if sw.search == "grid" else []
        self.configs: dict[str, dict[str, Any]] = {}
        """Every configuration asked so far: ``{"params", "trial" (its Optuna trial), "pack" (Tune trial id),
        "told" (the Optuna state it was told, or None), "steps" (intermediate values reported)}``."""
        self.queue: list[list[str]] = []
        self.live: set[str] = set()
        self.packs: dict[str, list[str]] = {}

    # ------------------------------------------------------------------------------------------- Tune's API ---

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """The space is the sweep file's; Tune's ``param_space`` is empty."""
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Concurrency is handled here (packs are formed for the free slots)."""
        self.max_concurrent = int(max_concurrent)
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next pack for trial ``trial_id``; None while every slot is busy; ``FINISHED`` when every
        configuration has been handed out."""
        if len(self.live) >= self.max_concurrent:
            return None
        if not self.queue:
            self._form_wave()
        if not self.queue:
            return Searcher.FINISHED if len(self.configs) >= self.n_configs else None
        pack = self.queue.pop(0)
        self.live.add(trial_id)
        self.packs[trial_id] = pack
        for cid in pack:
            self.configs[cid]["pack"] = trial_id
        return {"pack": [{"id": cid, "params": dict(self.configs[cid]["params"])} for cid in pack]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report each configuration's rung value as an intermediate value; tell those that left the pack."""
        for cid, m in members_of(result).items():
            self._observe(cid, m)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell every configuration of the pack not told yet: from the final result, or as failed (an errored
        pack, after its retries)."""
        for cid, m in members_of(result or {}).items():
            self._observe(cid, m)
        for cid in self.packs.get(trial_id, []):
            if self.configs[cid]["told"] is None:
                self._tell(cid, "FAIL", None)
        self.live.discard(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """Pickle the whole state (the Optuna study included)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        """Restore :meth:`save`'s state."""
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    # -------------------------------------------------------------------------------------------- internals ---

    def _ask(self) -> str:
        cid = f"c{len(self.configs):04d}"
        trial = None
        if self.study is not None:
            trial = self.study.ask(self.space)
            params = dict(trial.params)
        else:
            params = dict(self.grid[len(self.configs)])
        self.configs[cid] = {"params": params, "trial": trial, "pack": None, "told": None, "steps": {}}
        return cid

    def _form_wave(self) -> None:
        """Ask for the configurations of every free slot's pack, and split them into packs."""
        free = self.max_concurrent - len(self.live)
        n = min(self.n_configs - len(self.configs), max(free, 1) * self.pack_size)
        if n <= 0:
            return
        ids = [self._ask() for _ in range(n)]
        cfgs = [trial_config(self.sweep_file.base, self.configs[cid]["params"]) for cid in ids]
        packs = group_configs(cfgs, max_configs=self.pack_size, member_share=self.member_share)
        # the longest packs first, so that the short ones fill the slots at the end (LPT scheduling)
        packs.sort(key=lambda p: -pack_cost([cfgs[i] for i in p], self.member_share))
        self.queue += [[ids[i] for i in pack] for pack in packs]

    def _observe(self, cid: str, m: dict[str, Any]) -> None:
        rec = self.configs.get(cid)
        if rec is None or rec["told"] is not None:
            return
        step, value = m.get("episodes"), _finite(m.get("rung_value"))
        if rec["trial"] is not None and step is not None and value is not None and step not in rec["steps"]:
            rec["trial"].report(value, int(step))
            rec["steps"][step] = value
        status = m.get("status")
        if status == FINISHED:
            self._tell(cid, "COMPLETE", _finite(m.get("value")))
        elif status == STOPPED:
            pruned = self.sweep_file.sweep.tell_stopped == "pruned"
            self._tell(cid, "PRUNED" if pruned else "COMPLETE", _finite(m.get("value")))
        elif status == DIVERGED:
            self._tell(cid, "PRUNED" if self.sweep_file.sweep.tell_stopped == "pruned" else "FAIL", None)

    def _tell(self, cid: str, state: str, value: float | None) -> None:
        rec = self.configs[cid]
        if state == "COMPLETE" and value is None:
            state = "FAIL"  # no finite value to rank it by
        rec["told"] = state
        if self.study is None:
            return
        from optuna.trial import TrialState

        self.study.tell(rec["trial"], value if state == "COMPLETE" else None, state=TrialState[state])


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
