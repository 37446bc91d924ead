"""The trading environment (Gymnasium) and the one place where trades are priced.

:func:`apply_positions` is the whole trade logic: the single :class:`TradingEnv` and the vectorised
:class:`~dqlray.vec_env.VecTradingEnv` both call it, so they cannot disagree.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dqlray import ENV_ID as ENV_ID  # its home is the package, which registers it; kept importable from here
from dqlray import register_env
from dqlray.data import OHLCV, synth_market
from dqlray.market import Market

POSITION_SETS: dict[str, tuple[float, ...]] = {
    "long_flat": (0.0, 1.0),
    "long_short": (-1.0, 0.0, 1.0),
}


def position_values(positions: str) -> np.ndarray:
    """Target positions of each action for a position set name (``long_flat`` or ``long_short``)."""
    if positions not in POSITION_SETS:
        raise ValueError(f"positions={positions!r} is not one of {', '.join(POSITION_SETS)}")
    return np.asarray(POSITION_SETS[positions], dtype=np.float64)


def apply_positions(
    value: np.ndarray, pos_prev: np.ndarray, pos_new: np.ndarray, ret_next: np.ndarray, cost_rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Price a move from ``pos_prev`` to ``pos_new`` decided at bar t and held over bar t+1.

    The trade costs ``cost_rate`` (fees plus slippage) of the traded notional, ``|pos_new - pos_prev|`` times the
    portfolio value; the new position then earns ``pos_new * ret_next``. Returns ``(new_value, reward, cost_paid,
    traded)`` with ``reward = log(new_value / value)``, so rewards add up to the log of the final value.
    """
    traded = np.abs(pos_new - pos_prev)
    cost_frac = traded * cost_rate
    growth = (1.0 - cost_frac) * (1.0 + pos_new * ret_next)
    growth = np.maximum(growth, 1e-12)  # a short can lose more than everything: that is ruin, not a log of < 0
    return value * growth, np.log(growth), value * cost_frac, traded


class TradingEnv(gym.Env):
    """Trade one instrument with discrete target positions.

    ## Description
    At each bar t the agent sees the last ``window`` bars of causal features and its current position, and picks a
    target position. The new position is filled at bar t's close and earns the return of bar t+1, so no decision
    ever uses a price it could not have seen. Costs (``fee_bps + slippage_bps`` per unit of traded notional) are
    paid from the portfolio when the position changes.

    ## Action Space
    ``Discrete(2)`` for ``positions="long_flat"``: 0 flat, 1 long. ``Discrete(3)`` for ``positions="long_short"``:
    0 short, 1 flat, 2 long.

    ## Observation Space
    ``Box(-inf, inf, (window * 8 + 1,), float32)``: the window of standardised features (``ret_1, ret_5, ret_20,
    vol_20, ma_gap_10, ma_cross, range_1, rsi_14``; oldest bar first, scaler fitted on the training part only),
    then the position held now (-1, 0 or 1).

    ## Rewards
    ``log(V_{t+1} / V_t)`` net of costs, where V is the portfolio value: the sum of an episode's rewards is the log
    of its final value over its initial value.

    ## Starting State
    Flat, with value ``initial_value``, at the first bar of the chosen part; with ``random_start`` the first bar is
    drawn with ``self.np_random`` (within the first 10% of the part, or anywhere that leaves ``episode_length``
    steps).

    ## Episode End
    ``terminated`` on ruin: the value falls to ``ruin_fraction`` of the initial value or below.
    ``truncated`` at the end of the part's data, or after ``episode_length`` steps.

    ## Arguments
    ``data`` (an OHLCV series or a built :class:`~dqlray.market.Market`; default a 1,500-bar synthetic market),
    ``part`` (``train``, ``val`` or ``test``), ``window`` (8), ``positions`` (``long_flat``), ``fee_bps`` (1.0),
    ``slippage_bps`` (1.0), ``episode_length`` (None: to the end of the part), ``random_start`` (False),
    ``ruin_fraction`` (0.1), ``initial_value`` (1.0).

    ## Info
    ``portfolio_value``, ``position`` (-1, 0, 1), ``bar`` (index into the series), ``trades`` and ``costs`` (paid
    so far this episode, costs in portfolio currency).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        data: OHLCV | Market | None = None,
        *,
        part: str = "train",
        window: int = 8,
        positions: str = "long_flat",
        fee_bps: float = 1.0,
        slippage_bps: float = 1.0,
        episode_length: int | None = None,
        random_start: bool = False,
        ruin_fraction: float = 0.1,
        initial_value: float = 1.0,
    ) -> None:
        if data is None:
            data = synth_market(1500, seed=0)
        self.market = data if isinstance(data, Market) else Market.build(data, window=window)
        self.start, self.stop = self.market.part(part)
        if self.stop - self.start < 2:
            raise ValueError(f"part {part!r} has {self.stop - self.start} bars; need at least 2")
        if episode_length is not None and not 1 <= episode_length <= self.stop - self.start - 1:
            raise ValueError(f"episode_length={episode_length} must be in [1, {self.stop - self.start - 1}]")
        if fee_bps < 0 or slippage_bps < 0:
            raise ValueError(f"fee_bps={fee_bps} and slippage_bps={slippage_bps} must be >= 0")
        if not 0.0 <= ruin_fraction < 1.0:
            raise ValueError(f"ruin_fraction={ruin_fraction} must be in [0, 1)")
        self.pos_values = position_values(positions)
        self.cost_rate = (fee_bps + slippage_bps) * 1e-4
        self.episode_length = episode_length
        self.random_start = random_start
        self.ruin_value = ruin_fraction * initial_value
        self.initial_value = initial_value
        self.action_space = spaces.Discrete(len(self.pos_values))
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(self.market.obs_dim,), dtype=np.float32)
        self._t = self.start
        self._end = self.stop - 1
        self._pos = float(self.pos_values[np.argmin(np.abs(self.pos_values))])
        self._value = initial_value
        self._trades = 0
        self._costs = 0.0

    def _obs(self) -> np.ndarray:
        return self.market.observe(np.array([self._t]), np.array([self._pos]))[0]

    def _info(self) -> dict[str, Any]:
        return {"portfolio_value": self._value, "position": self._pos, "bar": self._t,
                "trades": self._trades, "costs": self._costs}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode flat at the part's first bar (or a random one with ``random_start``)."""
        super().reset(seed=seed)
        self._t, self._end = start_and_end(self.start, self.stop, self.episode_length, self.random_start,
                                           self.np_random)
        self._pos = float(self.pos_values[np.argmin(np.abs(self.pos_values))])
        self._value = self.initial_value
        self._trades = 0
        self._costs = 0.0
        return self._obs(), self._info()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Move to the target position of ``action`` and hold it over the next bar."""
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        new_pos = float(self.pos_values[int(action)])
        value, reward, cost, traded = apply_positions(
            np.float64(self._value), np.float64(self._pos), np.float64(new_pos),
            np.float64(self.market.ret_next[self._t]), self.cost_rate,
        )
        self._value = float(value)
        self._costs += float(cost)
        self._trades += int(traded > 0)
        self._pos = new_pos
        self._t += 1
        terminated = self._value <= self.ruin_value
        truncated = (not terminated) and self._t >= self._end
        return self._obs(), float(reward), bool(terminated), bool(truncated), self._info()


def start_and_end(
    start: int, stop: int, episode_length: int | None, random_start: bool, rng: np.random.Generator,
) -> tuple[int, int]:
    """First bar and end bar (exclusive of further decisions) of a new episode within ``[start, stop)``."""
    last = stop - 1  # the last bar can be observed, but no position taken there can be held over a next bar
    if episode_length is None:
        t0 = start + (int(rng.integers(0, max((stop - start) // 10, 1))) if random_start else 0)
        return t0, last
    t0 = start + (int(rng.integers(0, last - start - episode_length + 1)) if random_start else 0)
    return t0, t0 + episode_length


register_env(gym)  # done already when dqlray was imported first (see dqlray/__init__.py); a no-op then
