"""Training one configuration: a plain function, used as is by ``train_single.py``, with its checkpoints.

K seeds train in lockstep: seed k has its own environment stream, replay buffer sampling, exploration and network
initialisation, all derived from seed k alone, so the K-seed run equals K one-seed runs. Only the training part of
the data is traded; the greedy policies are scored on the validation part every ``eval_every`` episodes; the test
part is never touched here. The episode loop itself is :class:`dqlray.pack.PackRun` (a pack of one), the loop the
sweep's packed trials run too.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqlray.config import ExperimentConfig
from dqlray.data import OHLCV
from dqlray.dqn import DQNLearner, linear_epsilon
from dqlray.market import Market
from dqlray.pack import (
    MemberResult,
    PackRun,
    TrainingDiverged,
    evaluate_validation,
    steps_per_episode,
    validation_summary,
)
from dqlray.parts import build_market, make_learner
from dqlray.replay import BYTES_PER_TRANSITION, replay_nbytes
from dqlray.runinfo import guarded_write

__all__ = ["TrainResult", "TrainingDiverged", "load_checkpoint", "list_checkpoints", "replay_bytes",
           "checkpoint_bytes", "steps_per_episode", "train", "validation_metrics", "validation_summary"]

ReportFn = Callable[[dict[str, Any], str | None], None]
CHECKPOINT_FILE = "state.pt"


@dataclass
class TrainResult:
    """What a training run leaves: its per-episode metrics and the trained learner."""

    history: list[dict[str, Any]]
    learner: DQNLearner
    market: Market
    config: ExperimentConfig
    last_checkpoint: str | None = None
    stopped_early: bool = False
    member: MemberResult | None = None
    """The configuration's record in the loop: its evaluations, last validation returns and, with
    ``train.select``, the parameters chosen by validation."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        """Metrics of the last episode."""
        return self.history[-1] if self.history else {}

    def kept_learner(self) -> DQNLearner:
        """The learner whose parameters the run keeps for its test evaluation (``train.select``): the trained one,
        or a copy holding the parameters of the evaluation chosen by validation."""
        if self.member is None or self.member.selected is None:
            return self.learner
        learner = make_learner(self.config, self.market)
        learner.load_state_dict(self.member.selected["state"])
        return learner


def replay_bytes(config: ExperimentConfig) -> int:
    """Memory of the replay buffer for ``config`` (:func:`dqlray.replay.replay_nbytes`)."""
    return replay_nbytes(config.train.num_seeds, config.agent.buffer_size, config.agent.n_step)


def checkpoint_bytes(config: ExperimentConfig, market: Market) -> int:
    """About the size of one checkpoint of ``config``: the learner's state (networks, optimiser moments) plus the
    replay transitions a run of its budget can hold. For checking the room on a results filesystem up front."""
    held = min(config.agent.buffer_size, config.train.episodes * steps_per_episode(config, market))
    learner = make_learner(config.replace({"train": {"device": "cpu"}}), market)
    return _nbytes(learner.state_dict()) + config.train.num_seeds * held * BYTES_PER_TRANSITION


class Checkpointer:
    """Atomic checkpoint directories (written to a temporary name, then renamed) with rotation.

    A checkpoint that cannot be written (disk full, quota, read-only, no permission) raises one
    :class:`~dqlray.errors.WriteFailed` line naming the folder and the checkpoint's size; its temporary directory
    is removed and the earlier checkpoints stay (rotation only runs after a new one is complete; issue 13).
    """

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep
        with guarded_write(root.parent, root.name):
            root.mkdir(parents=True, exist_ok=True)

    def save(self, episode: int, state: dict) -> str:
        final = self.root / f"ckpt_{episode:06d}"
        tmp = self.root / f".tmp_ckpt_{episode:06d}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        out = _RecordingWriter()
        try:
            with guarded_write(self.root, f"the checkpoint of episode {episode}", _nbytes(state)):
                tmp.mkdir()
                try:
                    with open(tmp / CHECKPOINT_FILE, "wb") as out.file:
                        torch.save(state, out)
                except RuntimeError:
                    # torch reports a failed write as "enforce fail at inline_container.cc"; the OSError behind
                    # it (ENOSPC, ...) was recorded on its way through.
                    if out.error is None:
                        raise
                    raise out.error from None
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        for old in list_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)


class _RecordingWriter:
    """A file for ``torch.save`` that remembers the first OSError of a write (torch replaces it by a RuntimeError)."""

    def __init__(self) -> None:
        self.file: Any = None
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.file.flush()


def _nbytes(obj: Any) -> int:
    """About what ``obj`` takes in a checkpoint: the bytes of its arrays and tensors (plus a little per object)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values()) + 64
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj) + 16
    return 16


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    p = Path(root)
    if not p.exists():
        return []
    return sorted(c for c in p.glob("ckpt_*") if (c / CHECKPOINT_FILE).exists())


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint directory (or the newest one under a directory of checkpoints)."""
    p = Path(path)
    if not (p / CHECKPOINT_FILE).exists():
        found = list_checkpoints(p)
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoint found")
        p = found[-1]
    return torch.load(p / CHECKPOINT_FILE, map_location="cpu", weights_only=False)


def _epsilon(cfg: ExperimentConfig, step: int, total: int) -> float:
    a = cfg.agent
    return linear_epsilon(step, total, a.eps_start, a.eps_end, a.eps_decay_fraction)


def train(
    config: ExperimentConfig,
    source: OHLCV | Market,
    *,
    report: ReportFn | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | dict | None = None,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``config.train.num_seeds`` DQN agents in lockstep on the training part of ``source``.

    ``source`` is the price data, or the :class:`Market` already built from it for ``config`` (see
    :func:`dqlray.parts.build_market`). ``report(metrics, checkpoint_path)`` is called after every episode
    (``checkpoint_path`` is the checkpoint written at that episode, or None). Checkpoints go to ``checkpoint_dir``
    every ``train.checkpoint_every`` episodes and at the end; ``resume_from`` (a checkpoint, a directory of them, or
    a checkpoint already loaded with :func:`load_checkpoint`) continues a run exactly where it stopped.
    ``should_stop()`` is polled after each episode (a checkpoint is written before stopping). A loss that becomes
    non-finite raises :class:`TrainingDiverged` naming the episode.

    The loop is :class:`~dqlray.pack.PackRun`'s with a pack of one configuration: a run alone and a configuration
    inside a sweep's pack are trained by the same code.
    """
    tc = config.train
    market = source if isinstance(source, Market) else build_market(config, source)
    run = PackRun([config], market=market, on_diverged="raise")
    member = run.results[0]
    ckpt = Checkpointer(Path(checkpoint_dir), tc.keep_checkpoints) if checkpoint_dir is not None else None
    if resume_from is not None:
        run.load_state_dict(resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from))

    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=tc.episodes, initial=run.episode, desc=tc.experiment_name, unit="ep")
    last_ckpt = None
    stopped = False
    while run.active:
        metrics = run.run_episode()[0]
        done_episodes = metrics["episodes"]
        stop_now = should_stop is not None and should_stop()
        path = None
        if ckpt is not None and (done_episodes % tc.checkpoint_every == 0 or done_episodes == tc.episodes
                                 or stop_now):
            path = last_ckpt = ckpt.save(done_episodes, run_checkpoint(run, config))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ret=f"{metrics['episode_return']:.3f}", val_sharpe=f"{metrics.get('val_sharpe', 0):.2f}",
                            eps=f"{metrics['epsilon']:.2f}")
        if report is not None:
            report(metrics, path)
        if stop_now:
            stopped = True
            break
    if bar is not None:
        bar.close()
    return TrainResult(history=member.history, learner=run.learner, market=market, config=config,
                       last_checkpoint=last_ckpt, stopped_early=stopped, member=member,
                       extra={"replay_bytes": run.buffer.nbytes})


def run_checkpoint(run: PackRun, config: ExperimentConfig) -> dict:
    """A single run's checkpoint: its :class:`PackRun` state (the replay data if ``train.checkpoint_buffer``), its
    history and its config. ``state["learner"]`` loads into :func:`dqlray.parts.make_learner`'s learner."""
    return {**run.state_dict(config.train.checkpoint_buffer), "history": run.results[0].history,
            "config": config.to_dict()}


def validation_metrics(learner: DQNLearner, market: Market, config: ExperimentConfig) -> dict[str, float]:
    """Greedy policy of every seed on the validation part: mean and spread of Sharpe and return over seeds."""
    return validation_summary(evaluate_validation(learner, market, config).metrics)
