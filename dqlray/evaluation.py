"""One evaluation function for any policy: agents and baselines run through the same environment and costs.

A policy is any object with ``predict(obs) -> actions`` taking observations ``(N, obs_dim)`` and returning integer
actions ``(N,)`` (SB3's ``evaluate_policy`` takes "any object with a predict method" in the same spirit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dqlray.config import EnvConfig
from dqlray.market import Market
from dqlray.metrics import PERIODS_PER_YEAR, summarize
from dqlray.parts import make_env


class Policy(Protocol):
    """Anything that maps a batch of observations to a batch of actions."""

    def predict(self, obs: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        """Actions ``(N,)`` for observations ``(N, obs_dim)``."""
        ...


@dataclass(frozen=True)
class EvalResult:
    """A policy's pass over one part of the data, one row per environment (per seed for agents)."""

    name: str
    part: str
    time: np.ndarray  # (T + 1,) datetime64: the bars of the equity curve
    equity: np.ndarray  # (N, T + 1), starting at 1
    positions: np.ndarray  # (N, T): position held over each period
    traded: np.ndarray  # (N, T): traded notional / value at the start of each period
    metrics: list[dict]  # per environment

    @property
    def returns(self) -> np.ndarray:
        """Per-period simple returns ``(N, T)``."""
        return self.equity[:, 1:] / self.equity[:, :-1] - 1.0

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and standard deviation over environments (seeds) of every metric."""
        keys = self.metrics[0].keys()
        out: dict[str, dict[str, float]] = {}
        for k in keys:
            vals = np.array([m[k] for m in self.metrics], dtype=np.float64)
            out[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        return out


def evaluate_policy(
    policy: Policy, market: Market, *, part: str, env: EnvConfig | None = None, n_envs: int = 1,
    name: str = "policy", periods: int = PERIODS_PER_YEAR,
) -> EvalResult:
    """Run ``policy`` greedily over the whole of ``part`` from a flat start, with ``env``'s positions and costs
    (the defaults when None); return curves and metrics."""
    venv = make_env(market, env or EnvConfig(), n_envs, part=part, training=False)
    obs = venv.reset()
    n_steps = venv.stop - venv.start - 1
    equity = np.empty((n_envs, n_steps + 1))
    equity[:, 0] = venv.value
    held = np.empty((n_envs, n_steps))
    traded = np.empty((n_envs, n_steps))
    for i in range(n_steps):
        prev = venv.pos
        actions = np.asarray(policy.predict(obs), dtype=np.int64)
        step = venv.step(actions)
        held[:, i] = venv.pos_values[actions]
        traded[:, i] = np.abs(held[:, i] - prev)
        equity[:, i + 1] = step.portfolio_value
        obs = step.obs
    equity /= equity[:, :1]
    rets = equity[:, 1:] / equity[:, :-1] - 1.0
    metrics = [summarize(rets[k], held[k], traded[k], periods) for k in range(n_envs)]
    time = market.data.time[venv.start:venv.stop]
    return EvalResult(name=name, part=part, time=time, equity=equity, positions=held, traded=traded, metrics=metrics)
