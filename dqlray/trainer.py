"""The training loop: a plain function, used as is by ``train_single.py`` and by the Ray Tune trainable.

K seeds train in lockstep: seed k has its own environment stream, replay buffer sampling, exploration and network
initialisation, all derived from seed k alone, so the K-seed run equals K one-seed runs. Only the training part of
the data is traded; the greedy policies are scored on the validation part every ``eval_every`` episodes; the test
part is never touched here.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqlray.config import ExperimentConfig
from dqlray.data import OHLCV
from dqlray.dqn import DQNLearner, evaluation_policy
from dqlray.errors import DqlrayError
from dqlray.evaluation import evaluate_policy
from dqlray.market import Market
from dqlray.parts import build_market, build_parts, make_learner
from dqlray.replay import BYTES_PER_TRANSITION
from dqlray.runinfo import guarded_write
from dqlray.vec_env import VecTradingEnv

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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        """Metrics of the last episode."""
        return self.history[-1] if self.history else {}


def replay_bytes(config: ExperimentConfig) -> int:
    """Memory of the replay buffer for ``config``: seeds x capacity x bytes per transition."""
    return config.train.num_seeds * config.agent.buffer_size * BYTES_PER_TRANSITION


def checkpoint_bytes(config: ExperimentConfig, market: Market) -> int:
    """About the size of one checkpoint of ``config``: the learner's state (networks, optimiser moments) plus the
    replay transitions a run of its budget can hold. For checking the room on a results filesystem up front."""
    held = min(config.agent.buffer_size, config.train.episodes * steps_per_episode(config, market))
    learner = make_learner(config.replace({"train": {"device": "cpu"}}), market)
    return _nbytes(learner.state_dict()) + config.train.num_seeds * held * BYTES_PER_TRANSITION


def steps_per_episode(config: ExperimentConfig, market: Market) -> int:
    """Env steps per seed that make one episode of the budget."""
    a, b = market.part("train")
    return config.env.episode_length or (b - a - 1)


class _Checkpointer:
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
    frac = min(step / max(a.eps_decay_fraction * total, 1.0), 1.0)
    return a.eps_start + frac * (a.eps_end - a.eps_start)


class TrainingDiverged(DqlrayError):
    """The loss became non-finite: the run stops (its earlier checkpoints stay) instead of training on NaNs."""


def _check_finite_loss(loss: np.ndarray, episode: int, config: ExperimentConfig) -> None:
    bad = ~np.isfinite(loss)
    if bad.any():
        ac = config.agent
        seeds = [s for s, b in zip(config.train.seeds, bad, strict=True) if b]
        raise TrainingDiverged(
            f"training diverged at episode {episode}: the loss is {loss[bad][0]} for seed(s) "
            f"{', '.join(map(str, seeds))}; likely agent.learning_rate={ac.learning_rate:g} is too large (or "
            f"agent.reward_scale={ac.reward_scale:g}, agent.max_grad_norm={ac.max_grad_norm})")


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
    """
    torch.set_num_threads(config.train.torch_threads)
    tc, ac = config.train, config.agent
    market = source if isinstance(source, Market) else build_market(config, source)
    parts = build_parts(config, market)
    venv, learner, buffer, nstep = parts.env, parts.learner, parts.buffer, parts.nstep
    k = len(tc.seeds)
    per_episode = steps_per_episode(config, market)
    total_steps = tc.episodes * per_episode
    ckpt = _Checkpointer(Path(checkpoint_dir), tc.keep_checkpoints) if checkpoint_dir is not None else None

    history: list[dict[str, Any]] = []
    env_steps = 0
    start_episode = 0
    episodes_done = 0
    fill_until = ac.learning_starts  # no gradient step before this many env steps (per seed)
    last_val: dict[str, float] = {}
    obs = venv.reset()
    if resume_from is not None:
        state = resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from)
        learner.load_state_dict(state["learner"])
        buffer.load_state_dict(state["buffer"])
        nstep.load_state_dict(state["nstep"])
        _load_env_state(venv, state["env"])
        env_steps, start_episode, episodes_done = state["env_steps"], state["episode"], state["episodes_done"]
        history = list(state["history"])
        last_val = dict(state.get("last_val", {}))
        obs = venv.observe()
        if "arrays" not in state["buffer"]:  # resumed without its replay data: refill before learning again
            fill_until = env_steps + ac.learning_starts

    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=tc.episodes, initial=start_episode, desc=tc.experiment_name, unit="ep")
    t_start = time.perf_counter()
    last_ckpt = None
    stopped = False
    # A diverging network overflows in the greedy NumPy forward pass before its loss is checked at the end of the
    # episode; the check reports it in one line, so the overflow warnings would only be noise.
    with np.errstate(over="ignore", invalid="ignore"):
        for episode in range(start_episode, tc.episodes):
            t_ep = time.perf_counter()
            ep_returns: list[float] = []
            for _ in range(per_episode):
                eps = _epsilon(config, env_steps, total_steps)
                actions = learner.act(obs, eps)
                t = venv.t.copy()
                pos = venv.pos
                step = venv.step(actions)
                nstep.push(buffer, t, pos, actions, step.reward * ac.reward_scale, venv.pos_values[actions], step.terminated,
                           step.truncated)
                obs = step.obs
                env_steps += 1
                if (step.terminated | step.truncated).any():
                    fin = step.episode_return[~np.isnan(step.episode_return)]
                    ep_returns.extend(fin.tolist())
                    episodes_done += len(fin)
                if env_steps >= fill_until and env_steps % ac.train_freq == 0:
                    for _g in range(ac.gradient_steps):
                        learner.update(buffer.sample(ac.batch_size))
            done_episodes = episode + 1
            stats = learner.pop_stats()
            if stats is not None:
                _check_finite_loss(stats.loss, done_episodes, config)
            metrics: dict[str, Any] = {
                "episodes": done_episodes,
                "env_steps": env_steps,
                "episodes_completed": episodes_done / k,
                "episode_return": float(np.mean(ep_returns)) if ep_returns else float("nan"),
                "loss": float(stats.loss.mean()) if stats is not None else float("nan"),
                "mean_q": float(stats.mean_q.mean()) if stats is not None else float("nan"),
                "epsilon": _epsilon(config, env_steps, total_steps),
                "updates": learner.updates,
                "steps_per_s": per_episode * k / max(time.perf_counter() - t_ep, 1e-9),
            }
            if done_episodes % tc.eval_every == 0 or done_episodes == tc.episodes:
                last_val = validation_metrics(learner, market, config)
            metrics.update(last_val)
            metrics["time_total_s"] = time.perf_counter() - t_start
            history.append(metrics)
            stop_now = should_stop is not None and should_stop()
            path = None
            if ckpt is not None and (done_episodes % tc.checkpoint_every == 0 or done_episodes == tc.episodes
                                     or stop_now):
                state = {"learner": learner.state_dict(), "buffer": buffer.state_dict(tc.checkpoint_buffer),
                         "nstep": nstep.state_dict(), "env": _env_state(venv), "env_steps": env_steps,
                         "episode": done_episodes, "episodes_done": episodes_done, "history": history,
                         "last_val": last_val, "config": config.to_dict()}
                path = last_ckpt = ckpt.save(done_episodes, state)
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
    return TrainResult(history=history, learner=learner, market=market, config=config, last_checkpoint=last_ckpt,
                       stopped_early=stopped, extra={"replay_bytes": buffer.nbytes})


def validation_metrics(learner: DQNLearner, market: Market, config: ExperimentConfig) -> dict[str, float]:
    """Greedy policy of every seed (or their ensemble, ``train.ensemble``) on the validation part: mean and spread of
    Sharpe and return over seeds."""
    policy, n_envs = evaluation_policy(learner, ensemble=config.train.ensemble)
    res = evaluate_policy(policy, market, part="val", env=config.env, n_envs=n_envs, name="agent",
                          periods=config.train.periods_per_year)
    sharpes = np.array([m["sharpe"] for m in res.metrics])
    rets = np.array([m["total_return"] for m in res.metrics])
    return {
        "val_sharpe": float(sharpes.mean()),
        "val_sharpe_std": float(sharpes.std(ddof=1)) if len(sharpes) > 1 else 0.0,
        "val_sharpe_min": float(sharpes.min()),
        "val_return": float(rets.mean()),
        "val_return_std": float(rets.std(ddof=1)) if len(rets) > 1 else 0.0,
    }


_ENV_FIELDS = ("t", "end", "pos", "value", "ep_return")


def _env_state(venv: VecTradingEnv) -> dict:
    out = {name: getattr(venv, name).copy() for name in _ENV_FIELDS}
    out["rngs"] = [r.bit_generator.state for r in venv.rngs]
    return out


def _load_env_state(venv: VecTradingEnv, state: dict) -> None:
    for name in _ENV_FIELDS:
        setattr(venv, name, state[name].copy())
    for r, s in zip(venv.rngs, state["rngs"], strict=True):
        r.bit_generator.state = s
