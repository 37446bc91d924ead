"""Markets with a planted, known edge, and null markets: the ground truth the learning-power benchmark scores against.

A planted market's next-bar simple return is ``R[t+1] = m(features at t) + sigma[t+1] * eps[t+1]``, where the
expected return ``m`` is a function of the causal features the agent observes (:data:`dqlray.features.FEATURE_NAMES`,
computed the same way from the generated path) and the noise has a hidden two-state volatility regime and Student-t
shocks. So :meth:`Edge.expected_return` is the exact conditional mean of the return the environment pays, and
:class:`PlantedRule` (that mean, traded with the linear probe's cost rule) is the ceiling a learner can aim for.

Edges (issue 12), each scaled by ``strength``:

- ``linear``: one-bar autocorrelation, ``m = drift + strength * ret_1``.
- ``trend``: a multi-bar trend, ``m = drift + strength * ret_20 / 20`` (every one of the last 20 returns carries
  ``strength / 20`` into the next).
- ``interaction``: momentum in calm markets and mean reversion in turbulent ones, ``m = drift + strength * ret_1 *
  (1 if vol_20 < threshold else -rho)``, with ``rho`` set so that the two regimes' linear effects cancel: a linear
  model of ``ret_1`` finds (nearly) nothing, the interaction of ``ret_1`` and ``vol_20`` finds it all.

Null markets have no serial dependence at all: ``iid`` draws every return independently (constant volatility, the
same drift and fat tails); ``shuffled`` shuffles whole days (return and bar range together) of an edge-free regime
market, which keeps its fat tails and volatility mix and destroys the regimes' timing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dqlray.baselines import cost_aware_actions
from dqlray.data import OHLCV, shuffle_days
from dqlray.env import position_values
from dqlray.errors import DataError
from dqlray.market import Market

EDGES = ("linear", "trend", "interaction")
NULLS = ("iid", "shuffled")
KINDS = EDGES + NULLS
DEFAULT_STRENGTH = {"linear": 0.16, "trend": 0.4, "interaction": 0.16}
"""Strengths at which the planted rule earns a net test Sharpe of roughly 1 at 2 bps on 5,000 daily bars."""
DRIFT = 1e-4
"""Expected simple return per bar in every market (about 2.5% a year)."""

# The hidden volatility regime: calm and turbulent daily volatility, and the chance of staying in each per bar.
CALM_VOL, TURBULENT_VOL = 0.008, 0.02
STAY_CALM, STAY_TURBULENT = 0.99, 0.97
_SHOCK_DOF = 5.0
_BURN_IN = 100  # bars generated and dropped, so the first kept bar already has a full 20-bar history


def _turbulent_share() -> float:
    leave_calm, leave_turb = 1.0 - STAY_CALM, 1.0 - STAY_TURBULENT
    return leave_calm / (leave_calm + leave_turb)


VOL_THRESHOLD = float(np.sqrt(CALM_VOL * TURBULENT_VOL))
"""The interaction edge's regime line on ``vol_20``: the geometric mean of the two regimes' volatilities."""
REVERSION_RATIO = float((1 - _turbulent_share()) * CALM_VOL**2 / (_turbulent_share() * TURBULENT_VOL**2))
"""``rho``: the turbulent regime's reversion per unit of strength, so that calm momentum and turbulent reversion
contribute equal and opposite covariance of ``ret_1`` with the next return."""


@dataclass(frozen=True, kw_only=True)
class Edge:
    """What is planted in a market: its kind, strength and drift."""

    kind: str
    strength: float = 0.0
    drift: float = DRIFT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"planted market: edge {self.kind!r} is not one of {', '.join(KINDS)}")
        if not np.isfinite(self.strength) or self.strength < 0:
            raise DataError(f"planted market: strength={self.strength} must be a number >= 0")
        if self.kind == "trend" and self.strength >= 1:
            raise DataError(f"planted market: trend strength={self.strength} must be < 1 (the sum of the 20 "
                            "autoregressive weights; 1 or more explodes)")

    @property
    def planted(self) -> bool:
        """Whether the market has an edge (False for null markets)."""
        return self.kind in EDGES and self.strength > 0

    def expected_return(self, ret_1: np.ndarray, ret_20: np.ndarray, vol_20: np.ndarray) -> np.ndarray:
        """Expected simple return of the next bar given the raw features of bar t (the exact conditional mean)."""
        ret_1 = np.asarray(ret_1, dtype=np.float64)
        base = np.full(ret_1.shape, self.drift)
        if self.kind == "linear":
            return base + self.strength * ret_1
        if self.kind == "trend":
            return base + self.strength * np.asarray(ret_20, dtype=np.float64) / 20.0
        if self.kind == "interaction":
            regime = np.where(np.asarray(vol_20, dtype=np.float64) < VOL_THRESHOLD, 1.0, -REVERSION_RATIO)
            return base + self.strength * ret_1 * regime
        return base


def planted_market(n: int, edge: Edge, *, seed: int, start: str = "2000-01-03", freq: str = "B",
                   price0: float = 100.0) -> OHLCV:
    """A deterministic market of ``n`` bars with ``edge`` planted (or a null market). Same seed, same series.

    The shocks and regimes depend on ``seed`` and the kind only, not on the strength: the same seed at two strengths
    gives the same noise, so markets differ by the planted edge alone.
    """
    if n < 60:
        raise DataError(f"planted market: n={n} is too short; need at least 60 bars (50 of feature warm-up)")
    if edge.kind == "shuffled":  # the days of an edge-free regime market in a random order: dqlray.data's null
        regimes = planted_market(n, Edge(kind="linear", strength=0.0, drift=edge.drift), seed=seed, start=start,
                                 freq=freq, price0=price0)
        return dataclasses.replace(shuffle_days(regimes, seed=seed), source=f"planted(shuffled, seed={seed})")
    rng = np.random.default_rng([seed, KINDS.index(edge.kind)])
    m = n + _BURN_IN
    if edge.kind == "iid":
        avg_vol = float(np.sqrt(_turbulent_share() * TURBULENT_VOL**2 + (1 - _turbulent_share()) * CALM_VOL**2))
        vol = np.full(m, avg_vol)
        rets = edge.drift + vol * _shocks(rng, m)
        rets[0] = 0.0
    else:
        rets, vol = _generate(m, edge, rng)
    rets, vol = rets[_BURN_IN:], vol[_BURN_IN:]
    rets[0] = 0.0
    source = f"planted({edge.kind}, strength={edge.strength:g}, seed={seed})"
    return _bars(rets, vol, rng, start=start, freq=freq, price0=price0, source=source)


def _shocks(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit-variance Student-t shocks."""
    return rng.standard_t(_SHOCK_DOF, size=size) / np.sqrt(_SHOCK_DOF / (_SHOCK_DOF - 2.0))


def _generate(m: int, edge: Edge, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simple returns with the edge planted on the features of the path so far, and each bar's true volatility."""
    u = rng.random(m)
    eps = _shocks(rng, m)
    rets = np.zeros(m)
    logs = np.zeros(m)
    vol = np.empty(m)
    turbulent = False
    for t in range(m):
        stay = STAY_TURBULENT if turbulent else STAY_CALM
        turbulent = turbulent if u[t] < stay else not turbulent
        vol[t] = TURBULENT_VOL if turbulent else CALM_VOL
        if t == 0:
            continue
        if t > 21:
            # the features of bar t-1, exactly as dqlray.features computes them from log prices
            last = logs[t - 20:t]
            mean = edge.expected_return(logs[t - 1:t], last.sum(keepdims=True), last.std(ddof=1, keepdims=True))[0]
        else:
            mean = edge.drift
        rets[t] = max(mean + vol[t] * eps[t], -0.5)
        logs[t] = np.log1p(rets[t])
    return rets, vol


def _bars(rets: np.ndarray, vol: np.ndarray, rng: np.random.Generator, *, start: str, freq: str, price0: float,
          source: str) -> OHLCV:
    """OHLCV bars around the closes: opens near the last close, highs and lows spread by the bar's volatility."""
    n = len(rets)
    close = price0 * np.cumprod(1.0 + rets)
    open_ = np.empty(n)
    open_[0] = price0
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, 0.1, n - 1) * vol[1:])
    wick = np.abs(rng.normal(0.0, 0.5, size=(2, n))) * vol
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    open_, high, low, close = (np.round(a, 6) for a in (open_, high, low, close))
    high = np.maximum(high, np.maximum(open_, close))  # rounding must not put the close outside the bar
    low = np.minimum(low, np.minimum(open_, close))
    volume = np.round(1e6 * np.exp(rng.normal(0.0, 0.3, size=n)))
    time = pd.date_range(start=start, periods=n, freq=freq).to_numpy(dtype="datetime64[ns]")
    out = OHLCV(time=time, open=open_, high=high, low=low, close=close, volume=volume, source=source)
    for a in (out.time, out.open, out.high, out.low, out.close, out.volume):
        a.setflags(write=False)
    return out


class PlantedRule:
    """The planted edge as a policy: its exact expected return from the observation, traded with the cost rule.

    Reads ``ret_1``, ``ret_20`` and ``vol_20`` of the latest bar of the observation (information of bar t only) and
    acts with :func:`dqlray.baselines.cost_aware_actions`, as the linear probe does with its forecast.
    """

    def __init__(self, market: Market, positions: str, edge: Edge, *, cost_rate: float) -> None:
        self.market = market
        self.edge = edge
        self.values = position_values(positions)
        self.cost_rate = cost_rate

    def expected_return(self, obs: np.ndarray) -> np.ndarray:
        """The planted expected return of the next bar."""
        mk = self.market
        return self.edge.expected_return(mk.raw_feature("ret_1", obs), mk.raw_feature("ret_20", obs),
                                         mk.raw_feature("vol_20", obs))

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Long (or short) when the planted expected return clears the cost of getting there."""
        return cost_aware_actions(self.expected_return(obs), obs[:, -1], self.values, self.cost_rate)
