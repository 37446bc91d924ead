"""The Ray Tune trainable: one trial trains a pack of configurations (issue 14) with :class:`dqlray.pack.PackRun`.

Price data arrive once through ``tune.with_parameters`` (stored in the object store, not pickled into every trial's
config). The trial reports once per episode for the whole pack: each configuration's metrics under ``members``.
At ASHA's rung episodes it asks the sweep's rung table (:mod:`dqlray.tuning.rungs`) which configurations stop;
they leave the pack, so its compute shrinks. A configuration that leaves (stopped, at its budget, or diverged)
writes its record to the experiment folder (:mod:`dqlray.tuning.members`) before the pack checkpoints, and the pack
checkpoints whenever a configuration has left and every ``train.checkpoint_every`` episodes: a pack retried after a
crash, or resumed with the sweep, continues from there without training the configurations that had left again.
The function keeps no state between calls, so Tune can reuse its actor for the next trial.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqlray.config import ExperimentConfig
from dqlray.data import OHLCV
from dqlray.metrics import finite_or_none
from dqlray.pack import ACTIVE, PackRun
from dqlray.runinfo import free_bytes, short_of_space
from dqlray.trainer import Checkpointer, load_checkpoint
from dqlray.tuning.members import rung_value, write_member
from dqlray.tuning.rungs import rung_server
from dqlray.tuning.space import trial_config

REPORTED = ("val_sharpe", "val_sharpe_std", "val_return")  # per configuration, every episode: kept short


@dataclass(frozen=True)
class PackSettings:
    """What every pack of a sweep needs besides its configurations."""

    exp_dir: str
    """The experiment folder (shared by every node), where configurations leave their records."""
    metric: str
    """What ASHA and the search compare (``val_sharpe``)."""
    rungs: tuple[int, ...] = ()
    """ASHA's rung episodes (empty: no early stopping)."""
    rungs_actor: str | None = None
    """Name of the sweep's rung-table actor."""
    rung_window: int = 1
    """ASHA's value: the mean of the last ``rung_window`` validation values."""


def pack_trainable(config: dict[str, Any], *, data: OHLCV, base: ExperimentConfig, settings: PackSettings) -> None:
    """Train one trial's pack (``config["pack"]``: ``[{"id", "params"}, ...]``) and report every episode to Tune."""
    import ray
    from ray import tune

    members = config["pack"]
    ids = [m["id"] for m in members]
    cfgs = [trial_config(base, m["params"]) for m in members]
    run = PackRun(cfgs, data, on_diverged="stop")
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    node_ip = ray.util.get_node_ip_address()
    rungs = rung_server(settings.rungs_actor) if settings.rungs_actor and settings.rungs else None
    work = Path(tempfile.mkdtemp(prefix="dqlray-pack-"))
    cpu0 = time.process_time()
    try:
        restored = tune.get_checkpoint()
        if restored is not None:
            run.load_state_dict(load_checkpoint(restored.to_directory(str(work / "restored"))))
        ckpt = Checkpointer(work / "checkpoints", 1)
        announced: set[int] = set()  # left the pack and told in a result (after a restore: none yet)
        every = base.train.checkpoint_every
        while run.active:
            episode_metrics = run.run_episode()
            episode = run.episode
            if rungs is not None and episode in settings.rungs:
                live = run.active
                items = [(ids[ci], episode, rung_value(run.results[ci], settings.metric, settings.rung_window))
                         for ci in live]
                stops = ray.get(rungs.decide_many.remote(items))
                run.stop([ci for ci, stop in zip(live, stops, strict=True) if stop])
            left_now = [ci for ci in episode_metrics if run.results[ci].status != ACTIVE]
            for ci in left_now:  # the record first: a checkpoint never says "left" for a configuration without one
                write_member(settings.exp_dir, ids[ci], trial_id, members[ci]["params"], run.results[ci],
                             settings.metric, node_ip, run.market)
            told = {ci for ci, r in enumerate(run.results) if r.status != ACTIVE and ci not in announced}
            # wall clock, CPU seconds and peak memory of the pack's process: what bench.sweep measures the sweep by
            result = {"episodes": episode, "configs_active": len(run.active), "configs": len(cfgs),
                      "unix_time": time.time(), "cpu_s": time.process_time() - cpu0,
                      "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "members": {ids[ci]: _member_result(run, ci, settings) for ci in sorted(told | set(
                          episode_metrics))}}
            if run.active and (left_now or episode % every == 0):
                path = ckpt.save(episode, run.state_dict(base.train.checkpoint_buffer, departed_arrays=False))
                _check_room(ctx.get_trial_dir(), path, episode)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(path))
            else:
                tune.report(result)
            announced |= told
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _member_result(run: PackRun, ci: int, settings: PackSettings) -> dict[str, Any]:
    """One configuration's part of the pack's result: its latest metrics, how it stands, and the values the
    search is told (the rung value as intermediate, the value it is ranked by when it has left)."""
    r = run.results[ci]
    last = r.history[-1] if r.history else {}
    out: dict[str, Any] = {"episodes": last.get("episodes"), "status": r.status}
    for key in REPORTED:
        v = finite_or_none(last.get(key))
        if v is not None:
            out[key] = v
    rv = rung_value(r, settings.metric, settings.rung_window)
    if rv is not None:
        out["rung_value"] = rv
    if r.status != ACTIVE:
        value = finite_or_none(r.kept()[1].get(settings.metric))
        if value is not None:
            out["value"] = value
    return out


TRIAL_MARGIN = 256 * 1024  # the trial's result rows and error file still fit after its checkpoint


def _check_room(trial_dir: str, checkpoint: str, episode: Any) -> None:
    """Refuse (one line) to hand Tune a checkpoint its storage has no room for: Tune would copy part of it into the
    trial's folder and leave that behind (issue 13). The trial's earlier checkpoints stay."""
    size = sum(f.stat().st_size for f in Path(checkpoint).rglob("*") if f.is_file())
    free = free_bytes(trial_dir)
    if free is not None and free < size + TRIAL_MARGIN:
        raise short_of_space(trial_dir, f"the checkpoint of episode {episode}", size + TRIAL_MARGIN)
