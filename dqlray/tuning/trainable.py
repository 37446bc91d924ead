"""The Ray Tune trainable: a thin adapter around :func:`dqlray.trainer.train`.

Price data arrive once through ``tune.with_parameters`` (stored in the object store, not pickled into every trial's
config). Each episode's metrics are reported with ``tune.report``; checkpoints ride along on the episodes where the
trainer writes one, and a restarted trial (after a crash, or a resumed sweep) continues from ``tune.get_checkpoint()``.
Each validation evaluation's per-bar returns go to the trial's folder (:mod:`dqlray.tuning.validation`).
The function keeps no state between calls, so Tune can reuse its actor for the next trial.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dqlray.config import ExperimentConfig
from dqlray.data import OHLCV
from dqlray.runinfo import free_bytes, short_of_space
from dqlray.trainer import train
from dqlray.tuning.space import trial_config
from dqlray.tuning.validation import save_validation_returns


def dqn_trainable(params: dict[str, Any], *, data: OHLCV, base: ExperimentConfig) -> None:
    """Train one trial's config (``base`` + sampled ``params``) and report every episode to Tune."""
    from ray import tune

    cfg = trial_config(base, params)
    cfg = cfg.replace({"train": {"keep_checkpoints": 1}})  # Tune keeps the persisted copies
    work = Path(tempfile.mkdtemp(prefix="dqlray-trial-"))
    try:
        resume_from = None
        restored = tune.get_checkpoint()
        if restored is not None:
            resume_from = Path(restored.to_directory(str(work / "restored")))

        def report(metrics: dict[str, Any], checkpoint: str | None) -> None:
            clean = {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in metrics.items()}
            clean = {k: v for k, v in clean.items() if v is not None}
            if checkpoint is not None:
                _check_room(tune.get_context().get_trial_dir(), checkpoint, metrics.get("episodes"))
                tune.report(clean, checkpoint=tune.Checkpoint.from_directory(checkpoint))
            else:
                tune.report(clean)

        # Every evaluation's returns go to the trial's folder on the storage (issue 11: the verdict's check 3).
        trial_dir = tune.get_context().get_storage().trial_fs_path
        train(cfg, data, report=report, checkpoint_dir=work / "checkpoints", resume_from=resume_from, progress=False,
              on_validation=lambda result: save_validation_returns(trial_dir, result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


TRIAL_MARGIN = 256 * 1024  # the trial's result rows and error file still fit after its checkpoint


def _check_room(trial_dir: str, checkpoint: str, episode: Any) -> None:
    """Refuse (one line) to hand Tune a checkpoint its storage has no room for: Tune would copy part of it into the
    trial's folder and leave that behind (issue 13). The trial's earlier checkpoints stay."""
    size = sum(f.stat().st_size for f in Path(checkpoint).rglob("*") if f.is_file())
    free = free_bytes(trial_dir)
    if free is not None and free < size + TRIAL_MARGIN:
        raise short_of_space(trial_dir, f"the checkpoint of episode {episode}", size + TRIAL_MARGIN)
