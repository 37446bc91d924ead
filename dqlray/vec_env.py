"""N trading environments stepped at once with NumPy only.

Same semantics as :class:`~dqlray.env.TradingEnv` (both price trades with :func:`~dqlray.env.apply_positions`);
features are precomputed float32 arrays and observations are gathered by bar index, so a step is a handful of array
operations whatever N is. Each environment has its own random generator, so environment k's episodes depend on its
own seed only. Finished environments reset in the same step (the returned observation is the new episode's first).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dqlray.config import EnvConfig
from dqlray.env import apply_positions, position_values, start_and_end
from dqlray.market import Market


class VecStep(NamedTuple):
    """What one step of all N environments returns."""

    obs: np.ndarray  # (N, obs_dim) float32, after any reset
    reward: np.ndarray  # (N,) float64
    terminated: np.ndarray  # (N,) bool: ruin
    truncated: np.ndarray  # (N,) bool: end of data or of the episode length
    portfolio_value: np.ndarray  # (N,) value after the step, before any reset
    episode_return: np.ndarray  # (N,) log return of episodes that ended this step, NaN elsewhere
    any_done: bool  # some episode ended this step (computed once here, read by the training loop)


class VecTradingEnv:
    """``n_envs`` independent trading environments on one :class:`Market` part."""

    def __init__(self, market: Market, n_envs: int, *, part: str = "train", env: EnvConfig | None = None,
                 seeds: list[int] | None = None) -> None:
        """``env`` (default :class:`~dqlray.config.EnvConfig`'s defaults) sets positions, costs, episode length,
        random starts and ruin; a portfolio starts at value 1."""
        ec = env or EnvConfig()
        if n_envs < 1:
            raise ValueError(f"n_envs={n_envs} must be >= 1")
        self.market = market
        self.n_envs = n_envs
        self.start, self.stop = market.part(part)
        episode_length = ec.episode_length
        if episode_length is not None and not 1 <= episode_length <= self.stop - self.start - 1:
            raise ValueError(f"episode_length={episode_length} must be in [1, {self.stop - self.start - 1}]")
        self.pos_values = position_values(ec.positions)
        self.flat_action = int(np.argmin(np.abs(self.pos_values)))
        self.n_actions = len(self.pos_values)
        self.cost_rate = ec.cost_rate
        self.episode_length = episode_length
        self.random_start = ec.random_start
        self.initial_value = 1.0
        self.ruin_value = ec.ruin_fraction * self.initial_value
        seeds = list(range(n_envs)) if seeds is None else list(seeds)
        if len(seeds) != n_envs:
            raise ValueError(f"{len(seeds)} seeds for {n_envs} environments")
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.t = np.zeros(n_envs, dtype=np.int64)
        self.end = np.zeros(n_envs, dtype=np.int64)
        self.pos = np.zeros(n_envs, dtype=np.float64)
        self.value = np.full(n_envs, self.initial_value, dtype=np.float64)
        self.ep_return = np.zeros(n_envs, dtype=np.float64)
        self._obs = np.empty((n_envs, market.obs_dim), dtype=np.float32)
        self._no_returns = np.full(n_envs, np.nan)
        self._no_returns.setflags(write=False)

    def _reset_envs(self, idx: np.ndarray) -> None:
        for i in idx:
            self.t[i], self.end[i] = start_and_end(self.start, self.stop, self.episode_length, self.random_start,
                                                   self.rngs[i])
        self.pos[idx] = self.pos_values[self.flat_action]
        self.value[idx] = self.initial_value
        self.ep_return[idx] = 0.0

    def reset(self) -> np.ndarray:
        """Start every environment's first episode; returns observations ``(N, obs_dim)``."""
        self._reset_envs(np.arange(self.n_envs))
        return self.observe()

    def keep_envs(self, rows: np.ndarray | list[int]) -> None:
        """Keep only environments ``rows`` (in that order), each with its state and generator: a pack's members
        that stop leave the batch (issue 14)."""
        rows = np.asarray(rows, dtype=np.int64)
        for name in ("t", "end", "pos", "value", "ep_return"):
            setattr(self, name, getattr(self, name)[rows])
        self.rngs = [self.rngs[i] for i in rows]
        self.n_envs = len(rows)
        self._obs = np.empty((self.n_envs, self.market.obs_dim), dtype=np.float32)
        self._no_returns = np.full(self.n_envs, np.nan)
        self._no_returns.setflags(write=False)

    def observe(self) -> np.ndarray:
        """Current observations (a view of an internal buffer, overwritten by the next step)."""
        return self.market.observe(self.t, self.pos, out=self._obs)

    def step(self, actions: np.ndarray) -> VecStep:
        """Move every environment to the target position of its action and hold it over the next bar."""
        new_pos = self.pos_values[actions]
        value, reward, _, _ = apply_positions(self.value, self.pos, new_pos, self.market.ret_next[self.t],
                                              self.cost_rate)
        self.value = value
        self.pos = new_pos
        self.t += 1
        self.ep_return += reward
        terminated = value <= self.ruin_value
        done = terminated | (self.t >= self.end)
        truncated = done ^ terminated
        any_done = bool(done.any())
        if any_done:
            ep_ret = np.where(done, self.ep_return, np.nan)
            self.value = value.copy()  # the returned values stay those before the reset
            self._reset_envs(np.flatnonzero(done))
        else:
            ep_ret = self._no_returns
        return VecStep(self.observe(), reward, terminated, truncated, value, ep_ret, any_done)
