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
from dqlray.data import OHLCV, chronological_split
from dqlray.dqn import DQNLearner, GreedyPolicy, linear_epsilon, resolve_device
from dqlray.errors import ConfigError
from dqlray.evaluation import evaluate_policy
from dqlray.market import Market, first_decision_bar
from dqlray.replay import ReplayBuffer, replay_nbytes
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


def build_market(config: ExperimentConfig, data: OHLCV) -> Market:
    """The market arrays for ``config``'s window and split of ``data`` (scaler fitted on its training part)."""
    d = config.data
    split = chronological_split(data, train=d.train, val=d.val, warmup=first_decision_bar(d.window),
                                min_bars=max(d.window, 32))
    longest = split.train[1] - split.train[0] - 1
    if config.env.episode_length is not None and config.env.episode_length > longest:
        raise ConfigError(f"env.episode_length={config.env.episode_length} is longer than the training part of "
                          f"{data.source} allows ({longest} steps)")
    return Market.build(data, split, window=d.window)


def replay_bytes(config: ExperimentConfig) -> int:
    """Memory of the replay buffer for ``config`` (:func:`dqlray.replay.replay_nbytes`)."""
    return replay_nbytes(config.train.num_seeds, config.agent.buffer_size, config.agent.n_step)


def steps_per_episode(config: ExperimentConfig, market: Market) -> int:
    """Env steps per seed that make one episode of the budget."""
    a, b = market.part("train")
    return config.env.episode_length or (b - a - 1)


class _Checkpointer:
    """Atomic checkpoint directories (written to a temporary name, then renamed) with rotation."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep
        root.mkdir(parents=True, exist_ok=True)

    def save(self, episode: int, state: dict) -> str:
        final = self.root / f"ckpt_{episode:06d}"
        tmp = self.root / f".tmp_ckpt_{episode:06d}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        torch.save(state, tmp / CHECKPOINT_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(self.root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)


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
    data: OHLCV,
    *,
    report: ReportFn | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``config.train.num_seeds`` DQN agents in lockstep on the training part of ``data``.

    ``report(metrics, checkpoint_path)`` is called after every episode (``checkpoint_path`` is the checkpoint
    written at that episode, or None). Checkpoints go to ``checkpoint_dir`` every ``train.checkpoint_every`` episodes
    and at the end; ``resume_from`` (a checkpoint or a directory of them) continues a run exactly where it stopped.
    ``should_stop()`` is polled after each episode (a checkpoint is written before stopping).
    """
    torch.set_num_threads(config.train.torch_threads)
    tc, ac, ec = config.train, config.agent, config.env
    market = build_market(config, data)
    device = resolve_device(tc.device)
    seeds = tc.seeds
    k = len(seeds)
    streams = [np.random.SeedSequence(s).spawn(3) for s in seeds]  # env, buffer, exploration per seed
    venv = VecTradingEnv(market, k, part="train", positions=ec.positions, fee_bps=ec.fee_bps,
                         slippage_bps=ec.slippage_bps, episode_length=ec.episode_length,
                         random_start=ec.random_start, ruin_fraction=ec.ruin_fraction, seeds=[s[0] for s in streams])
    learner = DQNLearner(ac, market, venv.n_actions, seeds, [s[2] for s in streams], device)
    buffer = ReplayBuffer(k, ac.buffer_size, [s[1] for s in streams], gamma=ac.gamma, n_step=ac.n_step,
                          reward_scale=ac.reward_scale, pos_values=venv.pos_values)
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
        state = load_checkpoint(resume_from)
        learner.load_state_dict(state["learner"])
        buffer.load_state_dict(state["buffer"])
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
    for episode in range(start_episode, tc.episodes):
        t_ep = time.perf_counter()
        ep_returns: list[float] = []
        for _ in range(per_episode):
            eps = _epsilon(config, env_steps, total_steps)
            actions = learner.act(obs, eps)
            t = venv.t.copy()
            pos = venv.pos
            step = venv.step(actions)
            buffer.add(t, pos, actions, step.reward, step.terminated, step.truncated)
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
                     "env": _env_state(venv), "env_steps": env_steps,
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
    """Greedy policy of every seed on the validation part: mean and spread of Sharpe and return over seeds."""
    ec = config.env
    res = evaluate_policy(GreedyPolicy(learner), market, part="val", n_envs=learner.k, positions=ec.positions,
                          fee_bps=ec.fee_bps, slippage_bps=ec.slippage_bps, name="agent",
                          periods=config.train.periods_per_year)
    return validation_summary(res.metrics)


def validation_summary(per_seed: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and spread over seeds of the validation Sharpe and return, from each seed's metrics."""
    sharpes = np.array([m["sharpe"] for m in per_seed])
    rets = np.array([m["total_return"] for m in per_seed])
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
