"""Baseline strategies with the agents' ``predict(obs)`` interface.

Each reads the raw (unscaled) value of one causal feature at the latest bar of its observation, so it sees exactly
what the agent sees, and trades through the same environment with the same costs.
"""

from __future__ import annotations

import numpy as np

from dqlray.env import position_values
from dqlray.market import Market


class _Rule:
    """A baseline: long when a signal says so, otherwise the ``off`` position (flat, or short if allowed)."""

    def __init__(self, market: Market, positions: str) -> None:
        values = position_values(positions)
        self.market = market
        self.long = int(np.argmax(values))
        self.flat = int(np.argmin(np.abs(values)))
        self.short = int(np.argmin(values)) if values.min() < 0 else self.flat

    def _choose(self, long_signal: np.ndarray, short_signal: np.ndarray | None = None) -> np.ndarray:
        short_signal = ~long_signal if short_signal is None else short_signal
        return np.where(long_signal, self.long, np.where(short_signal, self.short, self.flat))


class BuyAndHold(_Rule):
    """Always long."""

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Long for every observation."""
        return np.full(len(obs), self.long, dtype=np.int64)


class AlwaysFlat(_Rule):
    """Never in the market (the zero line, after costs)."""

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Flat for every observation."""
        return np.full(len(obs), self.flat, dtype=np.int64)


class MovingAverageCrossover(_Rule):
    """Long when the 10-bar average is above the 50-bar average, else off."""

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Trend signal ``log(SMA10 / SMA50) > 0``."""
        return self._choose(self.market.raw_feature("ma_cross", obs) > 0)


class Momentum(_Rule):
    """Long after a positive 20-bar return, else off."""

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Signal ``ret_20 > 0``."""
        return self._choose(self.market.raw_feature("ret_20", obs) > 0)


class MeanReversion(_Rule):
    """Long when the price is below its 10-bar average (expecting a bounce), else off."""

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Signal ``log(price / SMA10) < 0``."""
        return self._choose(self.market.raw_feature("ma_gap_10", obs) < 0)


class RandomPolicy(_Rule):
    """Uniformly random actions from its own seeded generator."""

    def __init__(self, market: Market, positions: str, seed: int = 0) -> None:
        super().__init__(market, positions)
        self.n_actions = len(position_values(positions))
        self.rng = np.random.default_rng(seed)

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """A random action per observation."""
        return self.rng.integers(0, self.n_actions, size=len(obs))


BASELINES = {
    "buy_and_hold": BuyAndHold,
    "always_flat": AlwaysFlat,
    "ma_crossover": MovingAverageCrossover,
    "momentum": Momentum,
    "mean_reversion": MeanReversion,
    "random": RandomPolicy,
}


def make_baselines(market: Market, positions: str = "long_flat", seed: int = 0) -> dict[str, _Rule]:
    """Every baseline, bound to ``market``'s feature layout; the random one seeded with ``seed``."""
    out: dict[str, _Rule] = {}
    for name, cls in BASELINES.items():
        out[name] = cls(market, positions, seed) if cls is RandomPolicy else cls(market, positions)
    return out
