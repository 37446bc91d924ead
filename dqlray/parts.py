"""A run's parts, built from its config in one place.

The market arrays, the vectorised training environment, the learner, the replay buffer and the per-seed random
streams of a run (one configuration with its seeds, or a pack of several, issue 14) are all made here from
:class:`~dqlray.config.ExperimentConfig` objects. The trainer, the workflow, the sweep, the benchmarks and the
profile build through these functions, so a new setting is threaded through one place, and seed k's streams are
laid out the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dqlray.config import EnvConfig, ExperimentConfig
from dqlray.data import OHLCV, Split, chronological_split, date_index, walk_forward_folds
from dqlray.dqn import DQNLearner, resolve_device
from dqlray.env import position_values
from dqlray.errors import ConfigError, DataError
from dqlray.market import Market, first_decision_bar
from dqlray.replay import ReplayBuffer
from dqlray.vec_env import VecTradingEnv


@dataclass(frozen=True)
class SeedStreams:
    """Independent random streams of every seed: its environment, its replay sampling and its exploration.

    Seed ``s`` spawns its three streams from ``np.random.SeedSequence(s)`` and from nothing else, so a K-seed run
    equals K one-seed runs.
    """

    env: tuple[np.random.SeedSequence, ...]
    buffer: tuple[np.random.SeedSequence, ...]
    explore: tuple[np.random.SeedSequence, ...]

    @classmethod
    def of(cls, seeds: Sequence[int]) -> SeedStreams:
        """The streams of ``seeds``, in order."""
        spawned = [np.random.SeedSequence(int(s)).spawn(3) for s in seeds]
        return cls(*(tuple(s[i] for s in spawned) for i in range(3)))


def min_part_bars(config: ExperimentConfig) -> int:
    """The fewest bars a train, validation or test part may hold."""
    return max(config.data.window, 32)


def fold_splits(config: ExperimentConfig, data: OHLCV) -> list[Split]:
    """Every walk-forward fold of ``config`` (``data.walk_forward`` folds) over ``data``, in time order.

    Fold 0 trains on the first ``data.train`` of the bars after the warm-up (a fraction, or up to a date); the bars
    after it, less two embargoes, make ``walk_forward + 1`` equal blocks of S bars: each fold validates on S bars and
    tests on the S bars after an embargo, the test blocks following each other to the last bar
    (:func:`dqlray.data.walk_forward_folds`, expanding training windows; any rounding remainder goes to fold 0's
    training part). A one-line :class:`DataError` names what is too short.
    """
    d = config.data
    n_folds = d.walk_forward
    if n_folds < 1:
        raise ConfigError("data.walk_forward=0: no walk-forward folds (one chronological split)")
    warmup = first_decision_bar(d.window)
    embargo = warmup if d.embargo is None else d.embargo
    n = len(data)
    if isinstance(d.train, str):
        first_train_end = max(date_index(data, d.train, "train_end"), warmup)
    else:
        first_train_end = warmup + int(round((n - warmup) * d.train))
    least = min_part_bars(config)
    block = (n - first_train_end - 2 * embargo) // (n_folds + 1)
    if block < least or first_train_end - warmup < least:
        need = first_train_end + 2 * embargo + (n_folds + 1) * least
        raise DataError(
            f"{data.source}: too few rows for {n_folds} walk-forward folds: {n} rows leave blocks of {max(block, 0)} "
            f"bars for validation and test after the first training part ({first_train_end - warmup} bars, "
            f"data.train={d.train}) and two embargoes of {embargo} bars; each part needs {least} bars (about "
            f"{need} rows, or a smaller data.train, data.embargo or --walk-forward)")
    return walk_forward_folds(n, n_folds=n_folds, val_size=block, test_size=block, min_train=least,
                              embargo=embargo, expanding=True, warmup=warmup)


def split_of(config: ExperimentConfig, data: OHLCV) -> Split:
    """The train / validation / test split ``config`` trains and tests on: one chronological split, or one fold."""
    d = config.data
    if d.walk_forward:
        if d.fold is None:
            raise ConfigError(f"data.walk_forward={d.walk_forward} without data.fold: the walk-forward driver "
                              "(--walk-forward) runs every fold; a single market is one fold's (set data.fold)")
        return fold_splits(config, data)[d.fold]
    return chronological_split(data, train=d.train, val=d.val, warmup=first_decision_bar(d.window),
                               min_bars=min_part_bars(config))


def build_market(config: ExperimentConfig, data: OHLCV) -> Market:
    """The market arrays for ``config``'s window and split of ``data`` (scaler fitted on its training part)."""
    d = config.data
    split = split_of(config, data)
    longest = split.train[1] - split.train[0] - 1
    if config.env.episode_length is not None and config.env.episode_length > longest:
        raise ConfigError(f"env.episode_length={config.env.episode_length} is longer than the training part of "
                          f"{data.source} allows ({longest} steps)")
    return Market.build(data, split, window=d.window)


def make_env(market: Market, env: EnvConfig, n_envs: int, *, part: str = "train", training: bool = True,
             seeds: Sequence[np.random.SeedSequence | int] | None = None) -> VecTradingEnv:
    """The environments of ``part`` with ``env``'s frictions.

    Training environments use the config's episode length, random starts and ruin; evaluation environments
    (``training=False``) trade the whole part once from a flat start, with no ruin stop.
    """
    if not training:
        env = replace(env, episode_length=None, random_start=False, ruin_fraction=0.0)
    return VecTradingEnv(market, n_envs, part=part, env=env, seeds=None if seeds is None else list(seeds))


def make_learner(config: ExperimentConfig, market: Market, streams: SeedStreams | None = None) -> DQNLearner:
    """The learner of ``config``'s seeds (networks initialised from each seed, exploration from its stream)."""
    seeds = config.train.seeds
    streams = streams or SeedStreams.of(seeds)
    return DQNLearner(config.agent, market, len(position_values(config.env.positions)), seeds,
                      list(streams.explore), resolve_device(config.train.device))


@dataclass
class RunParts:
    """Everything a training run steps through."""

    market: Market
    env: VecTradingEnv
    learner: DQNLearner
    buffer: ReplayBuffer
    streams: SeedStreams


def build_parts(config: ExperimentConfig | Sequence[ExperimentConfig], market: Market) -> RunParts:
    """The environment, learner and replay buffer of ``config`` on ``market``.

    ``config`` is one configuration (a row per seed), or a pack of configurations that can share one
    (:func:`dqlray.pack.pack_problem`): a row per configuration and seed, in order, each row with its configuration's
    agent settings and its seed's streams, so a configuration's rows are laid out as they would be alone.
    """
    configs = [config] if isinstance(config, ExperimentConfig) else list(config)
    first = configs[0]
    seeds = [s for c in configs for s in c.train.seeds]
    agents = [c.agent for c in configs for _ in c.train.seeds]
    streams = SeedStreams.of(seeds)
    env = make_env(market, first.env, len(seeds), seeds=streams.env)
    learner = DQNLearner(agents[0] if len(configs) == 1 else agents, market, env.n_actions, seeds,
                         list(streams.explore), resolve_device(first.train.device))
    buffer = ReplayBuffer(len(seeds), first.agent.buffer_size, list(streams.buffer),
                          gamma=[a.gamma for a in agents], n_step=[a.n_step for a in agents],
                          reward_scale=[a.reward_scale for a in agents], pos_values=env.pos_values)
    return RunParts(market=market, env=env, learner=learner, buffer=buffer, streams=streams)
