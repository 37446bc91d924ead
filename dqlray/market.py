"""The arrays every environment steps through, built once per series.

:class:`Market` holds the scaled float32 features, the next-bar returns and the observation windows as plain NumPy
arrays, so stepping never touches pandas. It is built from an :class:`~dqlray.data.OHLCV` and a
:class:`~dqlray.data.Split`; the scaler is fitted on the split's training bars only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dqlray.data import OHLCV, Split, chronological_split
from dqlray.features import FEATURE_NAMES, WARMUP, Scaler, compute_features

# Precompute contiguous observation windows up to this size; gather rows by index beyond it.
_WINDOW_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True, eq=False)
class Market:
    """Scaled features and returns of one series, with its split.

    ``ret_next[t]`` is the simple return from bar ``t`` to bar ``t + 1`` (NaN at the last bar): a position chosen at
    bar ``t`` earns it. ``obs_window(t)`` is the flattened window of features of bars ``t - window + 1 .. t``.
    """

    data: OHLCV
    split: Split
    window: int
    scaler: Scaler
    features: np.ndarray  # (n, F) float32, zero inside the warm-up (never observed)
    ret_next: np.ndarray  # (n,) float64
    _windows: np.ndarray | None  # (n, window * F + 1) float32 when cached: observation rows, position column 0

    @classmethod
    def build(cls, data: OHLCV, split: Split | None = None, *, window: int = 8) -> Market:
        """Compute features, fit the scaler on the training part, and precompute observation windows."""
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        if split is None:
            split = chronological_split(data, warmup=first_decision_bar(window))
        if split.train[0] < first_decision_bar(window):
            raise ValueError(
                f"split starts at bar {split.train[0]}, before the first bar with a full window "
                f"({first_decision_bar(window)})"
            )
        raw = compute_features(data)
        scaler = Scaler.fit(raw, split.train[0], split.train[1])
        feats = np.nan_to_num(scaler.transform(raw), nan=0.0).astype(np.float32)
        price = data.price.astype(np.float64)
        ret_next = np.full(len(price), np.nan)
        ret_next[:-1] = price[1:] / price[:-1] - 1.0
        windows = None
        n, f = feats.shape
        if n * window * f * 4 <= _WINDOW_CACHE_BYTES:
            # One row per bar, laid out exactly as an observation (the last column, the position, is filled in by
            # observe), so a batch of observations is one np.take into the output buffer.
            idx = np.arange(n)[:, None] - window + 1 + np.arange(window)[None, :]
            windows = np.zeros((n, window * f + 1), dtype=np.float32)
            windows[:, :-1] = feats[np.clip(idx, 0, None)].reshape(n, window * f)
        for a in (feats, ret_next, windows):
            if a is not None:
                a.setflags(write=False)
        return cls(data=data, split=split, window=window, scaler=scaler, features=feats, ret_next=ret_next,
                   _windows=windows)

    @property
    def n_features(self) -> int:
        """Features per bar."""
        return self.features.shape[1]

    @property
    def obs_dim(self) -> int:
        """Length of an observation: the window of features plus the current position."""
        return self.window * self.n_features + 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the feature columns, in order."""
        return FEATURE_NAMES

    def part(self, name: str) -> tuple[int, int]:
        """Bar range ``[start, stop)`` of the train, val or test part."""
        return self.split.part(name)

    def observe(self, t: np.ndarray, pos_value: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Observations for bars ``t`` (int array) and held positions ``pos_value`` (-1, 0 or 1): ``(N, obs_dim)``."""
        n = len(t)
        if out is None:
            out = np.empty((n, self.obs_dim), dtype=np.float32)
        if self._windows is not None:
            np.take(self._windows, t, axis=0, out=out, mode="clip")  # "clip": no index buffering, t is in range
        else:
            idx = t[:, None] - self.window + 1 + np.arange(self.window)[None, :]
            out[:, :-1] = self.features[idx].reshape(n, -1)
        out[:, -1] = pos_value
        return out

    def raw_feature(self, name: str, obs: np.ndarray) -> np.ndarray:
        """Unscaled value at the latest bar of feature ``name`` in observations ``obs`` ``(N, obs_dim)``."""
        col = FEATURE_NAMES.index(name)
        scaled = obs[:, (self.window - 1) * self.n_features + col]
        return self.scaler.inverse_column(col, scaled.astype(np.float64))


def first_decision_bar(window: int) -> int:
    """The first bar at which a full window of defined features exists."""
    return WARMUP + window - 1
