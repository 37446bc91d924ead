"""Baseline strategies with the agents' ``predict(obs)`` interface.

The rules read the raw (unscaled) value of one causal feature at the latest bar of their observation; the linear
probe reads the whole observation. So each sees exactly what the agent sees, and trades through the same environment
with the same costs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dqlray.config import EnvConfig
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


def cost_aware_actions(expected: np.ndarray, held: np.ndarray, values: np.ndarray, cost_rate: float) -> np.ndarray:
    """The action whose position earns the most over the next bar after the cost of moving to it.

    For each row, position ``q`` is scored ``q * expected - cost_rate * |q - held|`` (first order in the returns: the
    env's growth is ``(1 - c|q - p|)(1 + q r)``), and the held position is kept unless another scores strictly more.
    This is the one-step (``gamma = 0``) greedy policy under a return forecast, and it makes a no-trade band:
    flat goes long only when the forecast clears the cost (``> c``), but long stays long until the forecast falls
    below ``-c``, because leaving costs ``c`` too; with ``long_short`` the short side mirrors it. Entering does not
    charge the later exit cost (a round trip, ``2c``), so a one-bar edge must clear ``c``, not ``2c``: the forecast
    is re-made every bar and the exit is paid only when a forecast below ``-c`` calls for it (issue 12).
    """
    mu = np.asarray(expected, dtype=np.float64)[:, None]
    held = np.asarray(held, dtype=np.float64)
    score = values[None, :] * mu - cost_rate * np.abs(values[None, :] - held[:, None])
    stay = np.argmin(np.abs(values[None, :] - held[:, None]), axis=1)
    best = np.argmax(score, axis=1)
    rows = np.arange(len(best))
    return np.where(score[rows, best] > score[rows, stay], best, stay).astype(np.int64)


class RidgeFit(NamedTuple):
    """A ridge regression: ``prediction = x @ coef + intercept``."""

    coef: np.ndarray
    intercept: float
    penalty: float


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> RidgeFit:
    """Ridge regression with an unpenalised intercept: minimise ``mean((y - x b - b0)^2) + penalty * |b|^2``.

    The penalty is per row (it does not grow with the number of rows), on columns that are already standardised.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    n = len(y)
    coef = np.linalg.solve(xc.T @ xc / n + penalty * np.eye(x.shape[1]), xc.T @ (y - ym) / n)
    return RidgeFit(coef=coef, intercept=float(ym - xm @ coef), penalty=float(penalty))


def probe_rows(market: Market, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The observations (without the position column) and next-bar returns of every bar of ``part``.

    Only bars whose next-bar return is earned inside the part are used (``t + 1 < stop``): the last bar's return
    reaches into the next part, so fitting on it would leak the first validation price into training.
    """
    a, b = market.part(part)
    t = np.arange(a, b - 1)
    return market.observe(t, np.zeros(len(t)))[:, :-1].astype(np.float64), market.ret_next[t]


class LinearProbe(_Rule):
    """Ridge regression of the next bar's return on the agent's observation, traded when it clears the costs.

    What the features hold without any RL (issue 12). Fitted on the training part only; the penalty is chosen from
    :attr:`PENALTIES` by the mean squared error of the forecasts on the validation part, then the fit on the
    training part with that penalty is kept. MSE rather than the validation Sharpe of the resulting policy, because
    the cost rule needs a calibrated forecast of the return (its size against the cost decides every trade), which
    is what MSE rewards, and because a Sharpe of a thresholded policy jumps with single trades: over a small grid
    the MSE ranking is the steadier one. Actions follow :func:`cost_aware_actions`; the position column of the
    observation is the held position and is not a regressor.
    """

    PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
    """Ridge penalties tried (per row, on standardised features)."""

    def __init__(self, market: Market, positions: str, *, cost_rate: float) -> None:
        super().__init__(market, positions)
        self.values = position_values(positions)
        self.cost_rate = cost_rate
        x_tr, y_tr = probe_rows(market, "train")
        x_va, y_va = probe_rows(market, "val")
        fits = [fit_ridge(x_tr, y_tr, p) for p in self.PENALTIES]
        self.val_mse = [float(np.mean((x_va @ f.coef + f.intercept - y_va) ** 2)) for f in fits]
        self.fit = fits[int(np.argmin(self.val_mse))]

    def expected_return(self, obs: np.ndarray) -> np.ndarray:
        """The forecast of the next bar's simple return for each observation."""
        return np.asarray(obs, dtype=np.float64)[:, :-1] @ self.fit.coef + self.fit.intercept

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Long (or short) when the forecast clears the cost of getting there, else hold or go flat."""
        return cost_aware_actions(self.expected_return(obs), obs[:, -1], self.values, self.cost_rate)


BASELINES = {
    "buy_and_hold": BuyAndHold,
    "always_flat": AlwaysFlat,
    "ma_crossover": MovingAverageCrossover,
    "momentum": Momentum,
    "mean_reversion": MeanReversion,
    "random": RandomPolicy,
    "linear_probe": LinearProbe,
}


def make_baselines(market: Market, env: EnvConfig | None = None, seed: int = 0) -> dict[str, _Rule]:
    """Every baseline for ``env``'s positions, bound to ``market``'s feature layout; the random one seeded with
    ``seed``; the linear probe fitted on ``market``'s training part and trading against ``env``'s costs."""
    env = env or EnvConfig()
    out: dict[str, _Rule] = {}
    for name, cls in BASELINES.items():
        if cls is RandomPolicy:
            out[name] = cls(market, env.positions, seed)
        elif cls is LinearProbe:
            out[name] = cls(market, env.positions, cost_rate=env.cost_rate)
        else:
            out[name] = cls(market, env.positions)
    return out
