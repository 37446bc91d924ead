"""Causal features and the train-only scaler.

Every feature at bar t is computed from bars ``<= t`` only (trailing windows, no centring, no back-fill); the first
:data:`WARMUP` bars have no value and are never traded. The scaler is fitted on the training part only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dqlray.data import OHLCV

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",      # log return of the last bar
    "ret_5",      # log return over 5 bars
    "ret_20",     # log return over 20 bars
    "vol_20",     # rolling std of 1-bar log returns over 20 bars
    "ma_gap_10",  # log(price / SMA10): mean-reversion signal
    "ma_cross",   # log(SMA10 / SMA50): trend signal (moving-average crossover)
    "range_1",    # log(high / low) of the last bar: intrabar volatility
    "rsi_14",     # RSI(14) scaled to [-1, 1]
)
WARMUP = 50  # bars before the first bar with every feature defined (SMA50)


def _sma(x: np.ndarray, w: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    c = np.cumsum(np.insert(x, 0, 0.0))
    out[w - 1:] = (c[w:] - c[:-w]) / w
    return out


def _lag_diff(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    out[k:] = x[k:] - x[:-k]
    return out


def _rolling_std(x: np.ndarray, w: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    valid = np.where(np.isnan(x), 0.0, x)
    c1 = np.cumsum(np.insert(valid, 0, 0.0))
    c2 = np.cumsum(np.insert(valid * valid, 0, 0.0))
    s1 = c1[w:] - c1[:-w]
    s2 = c2[w:] - c2[:-w]
    var = (s2 - s1 * s1 / w) / (w - 1)
    out[w - 1:] = np.sqrt(np.maximum(var, 0.0))
    out[: w] = np.nan  # the first window includes the undefined return of bar 0
    return out


def compute_features(data: OHLCV) -> np.ndarray:
    """Raw (unscaled) causal features, shape ``(len(data), len(FEATURE_NAMES))``; NaN before :data:`WARMUP`."""
    p = np.log(data.price)
    r1 = _lag_diff(p, 1)
    price = data.price
    sma10 = _sma(price, 10)
    sma50 = _sma(price, 50)
    up = np.where(np.isnan(r1), 0.0, np.maximum(r1, 0.0))
    dn = np.where(np.isnan(r1), 0.0, np.maximum(-r1, 0.0))
    avg_up, avg_dn = _sma(up, 14), _sma(dn, 14)
    rsi = np.where(avg_up + avg_dn > 0, (avg_up - avg_dn) / np.maximum(avg_up + avg_dn, 1e-300), 0.0)
    rsi[:14] = np.nan
    feats = np.stack(
        [
            r1,
            _lag_diff(p, 5),
            _lag_diff(p, 20),
            _rolling_std(r1, 20),
            np.log(price / sma10),
            np.log(sma10 / sma50),
            np.log(data.high / data.low),
            rsi,
        ],
        axis=1,
    )
    feats[:WARMUP] = np.nan
    return feats


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation fitted on the training bars only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray, start: int, stop: int) -> Scaler:
        """Fit on rows ``start:stop`` (the training part)."""
        part = raw[start:stop]
        if np.isnan(part).any():
            raise ValueError("scaler fitted on rows with undefined features (inside the warm-up)")
        std = part.std(axis=0)
        return cls(mean=part.mean(axis=0), std=np.where(std > 1e-12, std, 1.0))

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Standardised features (NaN rows stay NaN)."""
        return (raw - self.mean) / self.std

    def inverse_column(self, col: int, value: np.ndarray) -> np.ndarray:
        """Raw value of feature ``col`` from its scaled value (baselines read raw signals this way)."""
        return value * self.std[col] + self.mean[col]
