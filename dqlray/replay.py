"""Replay buffers for K members in preallocated NumPy arrays, with n-step returns formed when a batch is sampled.

A trading state is fully described by its bar index and the position held (the observation is the window of
features ending at that bar plus the position), so a step is stored as ``(bar, position, action, reward, done)``:
16 bytes (``BYTES_PER_TRANSITION``) instead of two float32 observations. Observations are gathered from the market's
precomputed feature windows when a batch is sampled. The next state of a step is implied: the next bar, and the
position its action targets.

Every member (one configuration with one seed) has its own buffer row, its own ``np.random.Generator`` (SB3's
buffer samples with the global ``np.random``; ours must not, so that member k's run depends on its seed alone), and
its own n-step length, discount and reward scale (issue 14: one pack trains several configurations). The n-step
return of a sampled step is formed from the stored 1-step rewards at sampling time (Sutton and Barto, 7.1):
``sum_j gamma^j r_j`` over the next n steps, with discount ``gamma^n``; a horizon that meets an episode end is
shorter, with discount 0 after ruin (``terminated``: no bootstrap) and ``gamma^h`` at the end of the data
(``truncated``: bootstrapping is right). A step whose n later rewards are not all in the buffer yet (and whose
episode has not ended) is never sampled.

Sampling reproduces the earlier design, which formed n-step transitions when they were inserted, exactly: draws,
indices and returns (summed in float64 in the same order) are the same, so results did not change. Memory is
``K * (buffer_size + 2 * (n_max - 1)) * BYTES_PER_TRANSITION`` whatever the window: ``n_max - 1`` extra slots
hold the steps still waiting for their later rewards, and as many mirror the first slots so that a horizon never
wraps around the ring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from dqlray.errors import DqlrayError

# 16-byte records with every field at its natural alignment: a batch gathers twice as fast as from packed 15-byte
# records, whose fields NumPy reads through its slow unaligned paths (bench/README.md).
_RECORD = np.dtype({"names": ["reward", "t", "pos", "action", "done"],
                    "formats": [np.float64, np.int32, np.int8, np.int8, np.int8],
                    "offsets": [0, 8, 12, 13, 14], "itemsize": 16})
SAMPLE_BLOCK = 64  # batches of uniform draws made per generator call
BYTES_PER_TRANSITION = _RECORD.itemsize
NOT_DONE, TERMINATED, TRUNCATED = 0, 1, 2  # values of the ``done`` field


class Transitions(NamedTuple):
    """A batch of transitions, one row per member: every field ``(K, B)``."""

    t: np.ndarray
    pos: np.ndarray
    action: np.ndarray
    ret: np.ndarray
    next_t: np.ndarray
    next_pos: np.ndarray
    discount: np.ndarray


def replay_nbytes(k: int, capacity: int, n_max: int) -> int:
    """Memory of a :class:`ReplayBuffer` of ``k`` members, ``capacity`` transitions each, longest n-step ``n_max``."""
    return k * (capacity + 2 * (n_max - 1)) * BYTES_PER_TRANSITION


def _per_member(value: Any, k: int, name: str, dtype: type) -> np.ndarray:
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 0:
        return np.full(k, a, dtype=dtype)
    if a.shape != (k,):
        raise ValueError(f"{name} has {a.shape[0] if a.ndim == 1 else a.shape} values for {k} members")
    return a.copy()


def _block_key(batch_size: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
    """One key per batch shape: equal per-member sizes are the one size (the pending draws are the same either way,
    so a pack whose remaining members agree keeps its draws when it starts asking for one size)."""
    if batch_size is None or isinstance(batch_size, int):
        return batch_size
    key = tuple(int(b) for b in batch_size)
    return key[0] if key and len(set(key)) == 1 else key


class ReplayBuffer:
    """K circular buffers of ``capacity`` transitions, one per member, each sampled with its own generator.

    ``gamma``, ``n_step`` and ``reward_scale`` are one value for every member or one per member; ``pos_values`` maps
    an action to the position it targets (the next state's position).
    """

    def __init__(self, k: int, capacity: int, seeds: Sequence[np.random.SeedSequence | int], *,
                 gamma: float | Sequence[float], pos_values: Sequence[float], n_step: int | Sequence[int] = 1,
                 reward_scale: float | Sequence[float] = 1.0) -> None:
        if len(seeds) != k:
            raise ValueError(f"{len(seeds)} seeds for {k} buffers")
        self.k = k
        self.capacity = capacity
        self.gamma = _per_member(gamma, k, "gamma", np.float64)
        self.n_step = _per_member(n_step, k, "n_step", np.int64)
        self.reward_scale = _per_member(reward_scale, k, "reward_scale", np.float64)
        if (self.n_step < 1).any():
            raise ValueError(f"n_step must be >= 1, got {self.n_step.tolist()}")
        self.n_max = int(self.n_step.max())
        self.slots = capacity + self.n_max - 1  # the ring: room for the steps still waiting for rewards
        self.pos_values = np.asarray(pos_values, dtype=np.float64)
        self._next_pos = self.pos_values.astype(np.float32)
        # One record array: a batch is one gather of records, not one gather per field (bench/README.md).
        self.data = np.zeros((k, self.slots + self.n_max - 1), dtype=_RECORD)  # + a mirror of the first slots
        self.arrays = {name: self.data[name] for name in _RECORD.names}  # writable views of each field
        self.steps = 0  # steps stored per member (every member stores one per env step)
        self.run = np.zeros(k, dtype=np.int64)  # steps since each member's last episode end
        self._ruin_stored = False  # whether any stored step ended in ruin (else every 1-step discount is gamma)
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self._rows = np.arange(k)
        self._tables()
        # Uniform draws are made in blocks, one generator call per member every SAMPLE_BLOCK batches: a call per
        # member per batch cost 7 us each, most of sampling at K=8 (bench/README.md). Member k's draws still come
        # from member k's generator alone, exactly as many as it would draw alone.
        self._block = np.empty((k, 0, 0))
        self._block_pos = 0
        self._block_key: int | tuple[int, ...] | None = None

    def _tables(self) -> None:
        """Discounts gamma^j of every member, computed with Python floats (as the 1-step-at-insertion design did)."""
        self._uniform = bool((self.gamma == self.gamma[0]).all() and (self.n_step == self.n_step[0]).all()
                             and (self.reward_scale == self.reward_scale[0]).all())
        g = [float(x) for x in self.gamma]
        self._gpow = np.array([[gi**j for j in range(self.n_max + 1)] for gi in g])  # (K, n_max + 1)
        # 1-step discount by done code: gamma after a step that continues or is truncated, 0 after ruin.
        self._disc1 = np.array([[gi, 0.0, gi] for gi in g], dtype=np.float32)
        self._scale_col = self.reward_scale[:, None]
        self._arange_n = np.arange(self.n_max)
        self._n_more = [(self.n_step > j)[:, None] for j in range(self.n_max)]  # (K, 1) each: j < n

    @property
    def nbytes(self) -> int:
        """Memory held by the buffer's arrays."""
        return self.data.nbytes

    @property
    def completed(self) -> np.ndarray:
        """Steps per member whose n-step return is known: all but those still waiting for later rewards."""
        if self.n_max == 1:
            return np.full(self.k, self.steps, dtype=np.int64)
        return self.steps - np.minimum(self.run, self.n_step - 1)

    @property
    def size(self) -> np.ndarray:
        """Transitions each member can sample from."""
        return np.minimum(self.completed, self.capacity)

    def add(self, t: np.ndarray, pos: np.ndarray, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
            truncated: np.ndarray) -> None:
        """Store one step of every member: each argument ``(K,)``; ``reward`` unscaled (the learning scale is each
        member's own, applied when sampled)."""
        at = self.steps % self.slots
        rec = self.data[:, at]  # a basic-indexed view: cheaper to write than a fancy-indexed one
        rec["t"] = t
        rec["pos"] = pos
        rec["action"] = action
        rec["reward"] = reward
        done = terminated | truncated
        if done.any():
            self._ruin_stored = self._ruin_stored or bool(terminated.any())
            rec["done"] = np.where(terminated, TERMINATED, np.where(truncated, TRUNCATED, NOT_DONE))
            if self.n_max > 1:
                self.run += 1
                self.run[done] = 0
        else:
            rec["done"] = NOT_DONE
            if self.n_max > 1:
                self.run += 1
        if at < self.n_max - 1:  # mirrored past the end of the ring (see _n_step)
            self.data[:, self.slots + at] = rec
        self.steps += 1

    def _draws(self, batch_size: int | Sequence[int]) -> np.ndarray:
        """Uniform draws ``(K, B)`` for one batch; member k uses its first ``batch_size[k]`` columns."""
        key = batch_size if isinstance(batch_size, int) else _block_key(batch_size)
        if self._block_pos >= self._block.shape[1] or key != self._block_key:
            if isinstance(key, int):
                self._block = np.stack([rng.random((SAMPLE_BLOCK, key)) for rng in self.rngs])
            else:
                if len(key) != self.k:
                    raise ValueError(f"{len(key)} batch sizes for {self.k} members")
                self._block = np.zeros((self.k, SAMPLE_BLOCK, max(key)))
                for i, (rng, b) in enumerate(zip(self.rngs, key, strict=True)):
                    self._block[i, :, :b] = rng.random((SAMPLE_BLOCK, b))
            self._block_key = key
            self._block_pos = 0
        u = self._block[:, self._block_pos]
        self._block_pos += 1
        return u

    def sample(self, batch_size: int | Sequence[int]) -> Transitions:
        """A batch per member, uniformly with replacement from the member's sampleable transitions.

        ``batch_size`` is one size for every member or one per member; the batch is ``(K, max(batch_size))`` and a
        member's samples beyond its own size are padding (index 0) that the learner masks.
        """
        u = self._draws(batch_size)
        cap = self.capacity
        if self.n_max == 1:
            # Every stored step is sampleable, and with no extra slots a draw names its slot directly.
            p = (u * min(self.steps, cap)).astype(np.int64)
            rec = self.data[self._rows[:, None], p]
            action = rec["action"].astype(np.int64)
            scale = self._scale_col[0, 0] if self._uniform else self._scale_col
            ret = (rec["reward"] * scale).astype(np.float32)
            if not self._ruin_stored:  # the common case: every discount is gamma
                discount = np.empty(p.shape, dtype=np.float32)
                discount[...] = self._disc1[:, :1]
            else:
                discount = self._disc1[self._rows[:, None], rec["done"]]
            return Transitions(rec["t"], rec["pos"], action, ret, rec["t"] + 1, np.take(self._next_pos, action),
                               discount)
        completed = self.completed
        p = (u * np.minimum(completed, cap)[:, None]).astype(np.int64)  # uniform over each member's sampleable part
        if self.steps > cap:
            # p names a slot of a capacity-sized ring of completed transitions (the earlier design's layout); map it
            # to that transition's index in time, then to its slot here.
            c = completed[:, None]
            p += cap * ((c - 1 - p) // cap)
            p %= self.slots
        rec, last, ret, discount = self._n_step(p)
        return Transitions(rec["t"], rec["pos"], rec["action"].astype(np.int64), ret, last["t"] + 1,
                           np.take(self._next_pos, last["action"].astype(np.int64)), discount)

    def _n_step(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """First records, last records, returns and discounts of the n-step transitions starting at slots ``p``."""
        # The first n_max - 1 slots are mirrored past the end of the ring, so a horizon never wraps: no modulo.
        window = self.data[self._rows[:, None, None], p[:, :, None] + self._arange_n]  # (K, B, n_max) records
        cont = window["done"] == NOT_DONE
        terms = window["reward"] * self._scale_col[:, :, None]
        terms *= self._gpow[:, None, :self.n_max]
        # sum_j gamma^j r_j in float64, term by term from 0.0 in the order the insertion-time design used; step j is
        # inside the horizon if j < n and no step before it ended its episode.
        ret = np.zeros(p.shape)
        alive = np.ones(p.shape, dtype=bool)
        h = np.zeros(p.shape, dtype=np.int64)
        for j in range(self.n_max):
            if j > 0:
                alive &= cont[:, :, j - 1]
                alive &= self._n_more[j]
            ret += terms[:, :, j] * alive
            h += alive
        last = self.data[self._rows[:, None], p + h - 1]
        discount = np.where(last["done"] == TERMINATED, 0.0, self._gpow[self._rows[:, None], h]).astype(np.float32)
        return window[:, :, 0], last, ret.astype(np.float32), discount

    def state_dict(self, include_data: bool = True) -> dict:
        """Everything needed to continue exactly: arrays (optional), counters, generator states."""
        out: dict[str, Any] = {"format": 2, "slots": self.slots, "steps": self.steps, "run": self.run.copy(),
                               "rngs": [r.bit_generator.state for r in self.rngs],
                               "block": self._block[:, self._block_pos:].copy(), "block_key": self._block_key}
        if include_data:  # only the filled part: a young run's checkpoint does not carry an empty buffer
            n = min(self.steps, self.slots)  # the ring; its mirror is rebuilt on load
            out["arrays"] = {k: v[:, :n].copy() for k, v in self.arrays.items()}
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`. Without stored arrays the buffer restarts empty."""
        if state.get("format") != 2 or state["slots"] != self.slots or len(state["rngs"]) != self.k:
            raise DqlrayError("checkpoint replay buffer does not match this run (another dqlray version, buffer "
                              "size, n-step or number of members)")
        for r, s in zip(self.rngs, state["rngs"], strict=True):
            r.bit_generator.state = s
        self._block = state["block"].copy()
        self._block_key = _block_key(state["block_key"])
        self._block_pos = 0
        if "arrays" in state:
            for k, v in state["arrays"].items():
                self.arrays[k][:, : v.shape[1]] = v
            self.data[:, self.slots:] = self.data[:, :self.n_max - 1]
            self.steps = int(state["steps"])
            self.run[...] = state["run"]
        else:
            self.steps = 0
            self.run[...] = 0
        self._ruin_stored = bool((self.arrays["done"][:, :min(self.steps, self.slots)] == TERMINATED).any())

    def remove_members(self, rows: Sequence[int]) -> None:
        """Drop members ``rows``: their buffer rows, generators and pending draws leave (the others are unchanged)."""
        gone = {int(r) for r in rows}
        keep = [r for r in range(self.k) if r not in gone]
        if not keep:
            raise ValueError("cannot remove every member of a replay buffer")
        self.data = self.data[keep]
        self.arrays = {name: self.data[name] for name in _RECORD.names}
        self.run = self.run[keep]
        self.gamma, self.n_step, self.reward_scale = self.gamma[keep], self.n_step[keep], self.reward_scale[keep]
        self.rngs = [self.rngs[r] for r in keep]
        self._block = self._block[keep]
        if isinstance(self._block_key, tuple):  # the pending draws stay, whichever way the next batch is asked
            self._block_key = _block_key([self._block_key[r] for r in keep])
            widest = self._block_key if isinstance(self._block_key, int) else max(self._block_key)
            self._block = self._block[:, :, :widest]  # the others' padding columns
        self.k = len(keep)
        self._rows = np.arange(self.k)
        self._tables()  # n_max and the slots stay: the slot layout does not depend on who is in the buffer
