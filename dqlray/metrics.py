"""Performance metrics as pure NumPy functions.

``r`` is an array of per-period simple returns, ``periods`` the number of periods per year (252 for daily bars).
Definitions follow ``shared/notes/trading-rl.md``: Sharpe and volatility use ``ddof=1``; Sortino's downside
deviation is taken over all n periods; max drawdown includes the starting value; CAGR uses periods, not calendar days
(quantstats#458); win rate is per period: ``#(r > 0) / #(r != 0)``.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

PERIODS_PER_YEAR = 252
EULER_GAMMA = 0.5772156649015329


def finite_or_none(value: object) -> float | None:
    """``value`` as a float when it is a finite number, else None (for tables and messages; a bool is not a number)."""
    if isinstance(value, bool):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def total_return(r: np.ndarray) -> float:
    """``prod(1 + r) - 1``."""
    return float(np.prod(1.0 + np.asarray(r, dtype=np.float64)) - 1.0) if len(r) else 0.0


def cagr(r: np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """Compound annual growth rate ``(1 + total)^(periods / n) - 1``."""
    n = len(r)
    if n == 0:
        return 0.0
    growth = 1.0 + total_return(r)
    return float(growth ** (periods / n) - 1.0) if growth > 0 else -1.0


def annual_volatility(r: np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """``std(r, ddof=1) * sqrt(periods)``."""
    return float(np.std(r, ddof=1) * math.sqrt(periods)) if len(r) > 1 else 0.0


def sharpe(r: np.ndarray, periods: int = PERIODS_PER_YEAR, rf: float = 0.0) -> float:
    """Annualised Sharpe ratio ``mean(r - rf) / std(r - rf, ddof=1) * sqrt(periods)``; 0 when the std is 0."""
    if len(r) < 2:
        return 0.0
    x = np.asarray(r, dtype=np.float64) - rf
    sd = np.std(x, ddof=1)
    return float(np.mean(x) / sd * math.sqrt(periods)) if sd > 1e-15 else 0.0


def sortino(r: np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """``mean(r) / sqrt(sum(min(r, 0)^2) / n) * sqrt(periods)``; 0 when there is no downside."""
    if len(r) == 0:
        return 0.0
    x = np.asarray(r, dtype=np.float64)
    dd = math.sqrt(float(np.sum(np.minimum(x, 0.0) ** 2)) / len(x))
    return float(np.mean(x) / dd * math.sqrt(periods)) if dd > 1e-15 else 0.0


def max_drawdown(r: np.ndarray) -> float:
    """``min(V / cummax(V)) - 1`` over the equity curve with its starting value 1 included (a value <= 0)."""
    v = np.concatenate([[1.0], np.cumprod(1.0 + np.asarray(r, dtype=np.float64))])
    return float(np.min(v / np.maximum.accumulate(v)) - 1.0)


def calmar(r: np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """``CAGR / |max drawdown|``; 0 without a drawdown."""
    mdd = max_drawdown(r)
    return cagr(r, periods) / abs(mdd) if mdd < -1e-15 else 0.0


def win_rate(r: np.ndarray) -> float:
    """Per-period win rate: ``#(r > 0) / #(r != 0)`` (periods with no P&L are not counted)."""
    x = np.asarray(r)
    nz = np.count_nonzero(x)
    return float(np.count_nonzero(x > 0) / nz) if nz else 0.0


def turnover(traded: np.ndarray, periods: int = PERIODS_PER_YEAR) -> float:
    """Annualised turnover: traded notional over portfolio value, summed and scaled to a year."""
    n = len(traded)
    return float(np.sum(traded) * periods / n) if n else 0.0


def exposure(positions: np.ndarray) -> float:
    """Fraction of periods with a non-zero position held."""
    return float(np.count_nonzero(positions) / len(positions)) if len(positions) else 0.0


def num_trades(traded: np.ndarray) -> int:
    """Number of periods in which the position changed."""
    return int(np.count_nonzero(traded))


def summarize(r: np.ndarray, positions: np.ndarray, traded: np.ndarray, periods: int = PERIODS_PER_YEAR) -> dict:
    """Every metric for one equity path: returns, held positions and traded notional, one entry per period."""
    return {
        "total_return": total_return(r),
        "cagr": cagr(r, periods),
        "annual_volatility": annual_volatility(r, periods),
        "sharpe": sharpe(r, periods),
        "sortino": sortino(r, periods),
        "max_drawdown": max_drawdown(r),
        "calmar": calmar(r, periods),
        "win_rate": win_rate(r),
        "num_trades": num_trades(traded),
        "turnover": turnover(traded, periods),
        "exposure": exposure(positions),
    }


def deflated_sharpe(
    r: np.ndarray, trial_sharpes: np.ndarray, *, periods: int = PERIODS_PER_YEAR, n_trials: int | None = None,
    observed: float | None = None,
) -> dict:
    """Deflated Sharpe Ratio (Bailey and Lopez de Prado, 2014) of the best of N trials.

    ``r`` are the selected strategy's per-period returns; ``trial_sharpes`` the annualised Sharpe ratios of the
    trials tried (their variance sets the expected maximum under the null). ``n_trials`` is N in that expected
    maximum when more were tried than ``trial_sharpes`` holds (every configuration and checkpoint the selection could
    choose among; default ``len(trial_sharpes)``). ``observed`` is the annualised statistic to deflate when it is not
    the Sharpe ratio of ``r`` (e.g. a mean over seeds of information ratios, issue 11); ``r`` then still gives T,
    skewness and kurtosis. Returns the probability that the true statistic is above the expected best of N unskilled
    trials (``dsr``), that expected maximum ``sr0`` (annualised), the observed statistic (``sharpe``, annualised),
    and N.
    """
    x = np.asarray(r, dtype=np.float64)
    t = len(x)
    n = len(trial_sharpes) if n_trials is None else int(n_trials)
    if n < len(trial_sharpes):
        raise ValueError(f"n_trials={n} is fewer than the {len(trial_sharpes)} trial Sharpe ratios given")
    sd = np.std(x, ddof=1) if t > 1 else 0.0
    scale = math.sqrt(periods)
    if observed is None:
        sr = float(np.mean(x) / sd) if sd > 1e-15 else 0.0  # per period
    else:
        sr = float(observed) / scale
    nd = NormalDist()
    if n > 1 and len(trial_sharpes) > 1:
        var_sr = float(np.var(np.asarray(trial_sharpes, dtype=np.float64) / scale, ddof=1))
        sr0 = math.sqrt(var_sr) * ((1 - EULER_GAMMA) * nd.inv_cdf(1 - 1 / n) + EULER_GAMMA * nd.inv_cdf(1 - 1 / (n * math.e)))
    else:
        sr0 = 0.0
    if t < 3 or sd <= 1e-15:
        return {"dsr": 0.0, "sr0": sr0 * scale, "sharpe": sr * scale, "n_trials": n}
    z = (x - x.mean()) / x.std()
    g3 = float(np.mean(z**3))
    g4 = float(np.mean(z**4))
    denom = 1 - g3 * sr + (g4 - 1) / 4 * sr**2
    dsr = nd.cdf((sr - sr0) * math.sqrt(t - 1) / math.sqrt(max(denom, 1e-12)))
    return {"dsr": float(dsr), "sr0": sr0 * scale, "sharpe": sr * scale, "n_trials": n}

