"""Replay buffers for K seeds in preallocated NumPy arrays, and the n-step return accumulator.

A trading state is fully described by its bar index and the position held (the observation is the window of
features ending at that bar plus the position), so a transition is stored as ``(bar, position, action, return,
next bar, next position, discount)``: about 30 bytes instead of two float32 observations. Observations are gathered
from the market's precomputed feature windows when a batch is sampled. Memory is therefore
``K * buffer_size * BYTES_PER_TRANSITION`` whatever the window.

Each seed has its own buffer row and its own ``np.random.Generator`` (SB3's buffer samples with the global
``np.random``; ours must not, so that seed k's run depends on seed k alone).
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple

import numpy as np

_FIELDS = (("t", np.int32), ("pos", np.float32), ("action", np.int64), ("ret", np.float32),
           ("next_t", np.int32), ("next_pos", np.float32), ("discount", np.float32))
SAMPLE_BLOCK = 64  # batches of uniform draws made per generator call
BYTES_PER_TRANSITION = sum(np.dtype(d).itemsize for _, d in _FIELDS)


class Transitions(NamedTuple):
    """A batch of transitions, one row per seed: every field ``(K, B)``."""

    t: np.ndarray
    pos: np.ndarray
    action: np.ndarray
    ret: np.ndarray
    next_t: np.ndarray
    next_pos: np.ndarray
    discount: np.ndarray


class ReplayBuffer:
    """K circular buffers of ``capacity`` transitions, one per seed, each sampled with its own generator."""

    def __init__(self, k: int, capacity: int, seeds: list[np.random.SeedSequence | int]) -> None:
        if len(seeds) != k:
            raise ValueError(f"{len(seeds)} seeds for {k} buffers")
        self.k = k
        self.capacity = capacity
        # One record array: a batch is one gather of 32-byte records, not seven gathers (bench/README.md).
        self.data = np.zeros((k, capacity), dtype=np.dtype(list(_FIELDS)))
        self.arrays = {name: self.data[name] for name, _ in _FIELDS}  # writable views of each field
        self.ptr = np.zeros(k, dtype=np.int64)
        self.size = np.zeros(k, dtype=np.int64)
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self._rows = np.arange(k)
        # Uniform draws are made in blocks, one generator call per seed every SAMPLE_BLOCK batches: a call per seed
        # per batch cost 7 us each, most of sampling at K=8 (bench/README.md). Seed k's draws still come from
        # seed k's generator alone.
        self._block = np.empty((k, 0, 0))
        self._block_pos = 0

    @property
    def nbytes(self) -> int:
        """Memory held by the buffer's arrays."""
        return self.data.nbytes

    def add_all(self, t: np.ndarray, pos: np.ndarray, action: np.ndarray, ret: np.ndarray, next_t: np.ndarray,
                next_pos: np.ndarray, discount: np.ndarray) -> None:
        """Add one transition to every seed's buffer (the common 1-step case): each argument ``(K,)``."""
        p = int(self.ptr[0])
        if not (self.ptr == p).all():  # n-step flushes can leave the seeds' write positions apart
            self.add(self._rows, t, pos, action, ret, next_t, next_pos, discount)
            return
        rec = self.data[:, p]  # a basic-indexed view: cheaper to write than a fancy-indexed one
        rec["t"] = t
        rec["pos"] = pos
        rec["action"] = action
        rec["ret"] = ret
        rec["next_t"] = next_t
        rec["next_pos"] = next_pos
        rec["discount"] = discount
        self.ptr[:] = (p + 1) % self.capacity
        np.minimum(self.size + 1, self.capacity, out=self.size)

    def add(self, rows: np.ndarray, t: Any, pos: Any, action: Any, ret: Any, next_t: Any, next_pos: Any,
            discount: Any) -> None:
        """Add one transition to each buffer in ``rows`` (distinct seed indices)."""
        p = self.ptr[rows]
        a = self.arrays
        a["t"][rows, p] = t
        a["pos"][rows, p] = pos
        a["action"][rows, p] = action
        a["ret"][rows, p] = ret
        a["next_t"][rows, p] = next_t
        a["next_pos"][rows, p] = next_pos
        a["discount"][rows, p] = discount
        self.ptr[rows] = (p + 1) % self.capacity
        self.size[rows] = np.minimum(self.size[rows] + 1, self.capacity)

    def sample(self, batch_size: int) -> Transitions:
        """``batch_size`` transitions per seed, uniformly with replacement from that seed's buffer."""
        if self._block_pos >= self._block.shape[1] or self._block.shape[2] != batch_size:
            self._block = np.stack([rng.random((SAMPLE_BLOCK, batch_size)) for rng in self.rngs])
            self._block_pos = 0
        u = self._block[:, self._block_pos]
        self._block_pos += 1
        idx = (u * self.size[:, None]).astype(np.int64)  # uniform over each seed's filled part
        rec = self.data[self._rows[:, None], idx]
        return Transitions(rec["t"], rec["pos"], rec["action"], rec["ret"], rec["next_t"], rec["next_pos"],
                           rec["discount"])

    def state_dict(self, include_data: bool = True) -> dict:
        """Everything needed to continue exactly: arrays (optional), pointers, sizes, generator states."""
        out: dict[str, Any] = {"ptr": self.ptr.copy(), "size": self.size.copy(),
                               "rngs": [r.bit_generator.state for r in self.rngs],
                               "block": self._block[:, self._block_pos:].copy()}
        if include_data:  # only the filled part: a young run's checkpoint does not carry an empty buffer
            n = int(self.size.max())
            out["arrays"] = {k: v[:, :n].copy() for k, v in self.arrays.items()}
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`. Without stored arrays the buffer restarts empty."""
        for r, s in zip(self.rngs, state["rngs"], strict=True):
            r.bit_generator.state = s
        self._block = state["block"].copy()
        self._block_pos = 0
        if "arrays" in state:
            for k, v in state["arrays"].items():
                self.arrays[k][:, : v.shape[1]] = v
            self.ptr[...] = state["ptr"]
            self.size[...] = state["size"]
        else:
            self.ptr[...] = 0
            self.size[...] = 0


class NStepAccumulator:
    """Turns K streams of 1-step transitions into n-step transitions (Sutton and Barto, 7.1).

    A transition leaves once n later rewards are known, with return ``sum_j gamma^j r_j`` and discount
    ``gamma^n``; when an episode ends, the pending ones leave with the shorter horizon, and a discount of 0 if the
    episode terminated (ruin) rather than being truncated (end of data, where bootstrapping is right).
    """

    def __init__(self, k: int, n: int, gamma: float) -> None:
        self.k, self.n, self.gamma = k, n, gamma
        self.pending: list[deque] = [deque() for _ in range(k)]

    def push(self, buffer: ReplayBuffer, t: np.ndarray, pos: np.ndarray, action: np.ndarray, reward: np.ndarray,
             next_pos: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> None:
        """Record one step of every stream and move finished n-step transitions into ``buffer``."""
        if self.n == 1:
            discount = np.where(terminated, 0.0, self.gamma)
            buffer.add_all(t, pos, action, reward, t + 1, next_pos, discount)
            return
        for i in range(self.k):
            q = self.pending[i]
            q.append((int(t[i]), float(pos[i]), int(action[i]), float(reward[i])))
            done = bool(terminated[i] or truncated[i])
            while q and (len(q) == self.n or done):
                ret = 0.0
                for j, item in enumerate(q):
                    ret += self.gamma**j * item[3]
                disc = 0.0 if terminated[i] else self.gamma ** len(q)
                t0, p0, a0, _ = q.popleft()
                buffer.add(np.array([i]), t0, p0, a0, ret, int(t[i]) + 1, float(next_pos[i]), disc)

    def state_dict(self) -> list[list[tuple]]:
        """Pending transitions of every stream."""
        return [list(q) for q in self.pending]

    def load_state_dict(self, state: list[list[tuple]]) -> None:
        """Restore pending transitions."""
        self.pending = [deque(tuple(x) for x in q) for q in state]
