"""The DQN update for K seeds at once (Mnih et al. 2015; Double DQN, van Hasselt et al. 2016).

Seeds never interact: the loss is the sum of the seeds' mean losses (so each seed's gradient is its own), gradients
are clipped per seed, and Adam is elementwise. A K-seed learner therefore follows the same trajectory as K
one-seed learners, up to floating-point order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from dqlray.config import AgentConfig
from dqlray.errors import ConfigError, DqlrayError
from dqlray.market import Market
from dqlray.networks import BatchedMLP
from dqlray.replay import Transitions

EXPLORE_BLOCK = 256  # steps of exploration draws made per generator call


class UpdateStats(NamedTuple):
    """Per-seed statistics of one gradient step."""

    loss: np.ndarray  # (K,)
    mean_q: np.ndarray  # (K,)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available) to a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(name)


class DQNLearner:
    """Online and target Q-networks, the optimiser, and exploration for K seeds.

    Parameters, gradients, Adam moments and the target are ``(K, P)`` tensors, so the optimiser step, the per-seed
    gradient clipping and the target sync are a few tensor operations each (see :mod:`dqlray.networks`).
    """

    ADAM_BETAS = (0.9, 0.999)
    ADAM_EPS = 1e-8

    def __init__(self, cfg: AgentConfig, market: Market, n_actions: int, seeds: tuple[int, ...],
                 explore_seeds: list[np.random.SeedSequence], device: torch.device) -> None:
        self.cfg = cfg
        self.market = market
        self.k = len(seeds)
        self.n_actions = n_actions
        self.device = device
        self.net = BatchedMLP(market.obs_dim, n_actions, cfg.hidden, seeds, dueling=cfg.dueling, device=device)
        self.target_flat = self.net.flat.clone()
        self.target_w, self.target_b = self.net.views(self.target_flat)
        self.grad = torch.zeros_like(self.net.flat)
        self.exp_avg = torch.zeros_like(self.net.flat)
        self.exp_avg_sq = torch.zeros_like(self.net.flat)
        self.explore_rngs = [np.random.default_rng(s) for s in explore_seeds]
        self._explore = np.empty((self.k, 0, 2))
        self._explore_pos = 0
        self.updates = 0
        b = cfg.batch_size
        # One preallocated buffer holds a batch's observations and next observations, (K, 2B, obs_dim): one gather
        # fills it and one forward pass of the online network covers both halves (Double DQN needs both).
        self._obs_np = np.empty((self.k, 2 * b, market.obs_dim), dtype=np.float32)
        self._idx_t = np.empty((self.k, 2 * b), dtype=np.int64)
        self._idx_p = np.empty((self.k, 2 * b), dtype=np.float32)
        self._dq = torch.zeros(self.k, b, n_actions, device=device)
        self._grad_views = self.net.views(self.grad)
        self._stats = torch.zeros(2, self.k, device=device)
        self._stats_n = 0
        self._np_weights = None
        if device.type == "cpu":
            self._np_weights = ([w.numpy() for w in self.net.weights], [b_.numpy() for b_ in self.net.biases])

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Greedy action of seed k for observation ``obs[k]`` (``obs`` is ``(K, obs_dim)``)."""
        if self._np_weights is not None:
            return self._scores_numpy(obs).argmax(axis=-1)
        q = self.net.forward(self._tensor(np.ascontiguousarray(obs, dtype=np.float32))[:, None, :])
        return q[:, 0, :].argmax(dim=-1).cpu().numpy()

    @torch.inference_mode()
    def action_scores(self, obs: np.ndarray) -> np.ndarray:
        """Seed k's Q-values ``(K, n_actions)`` for observation ``obs[k]``, up to a constant per seed and observation.

        With a dueling head the constant is the state value less the mean advantage (the scores are the
        advantages); it moves no argmax, neither a seed's nor that of a mean over seeds (see :class:`EnsemblePolicy`).
        """
        if self._np_weights is not None:
            return self._scores_numpy(obs)
        q = self.net.forward(self._tensor(np.ascontiguousarray(obs, dtype=np.float32))[:, None, :])
        return q[:, 0, :].cpu().numpy()

    def _scores_numpy(self, obs: np.ndarray) -> np.ndarray:
        # One observation per seed: a torch call costs ~5 us of dispatch, NumPy's ~1 us, and on the CPU the NumPy
        # arrays are views of the same memory as the torch parameters, so they are always current.
        ws, bs = self._np_weights
        h = obs[:, None, :]
        for i in range(self.net.n_hidden):
            h = np.maximum(np.matmul(h, ws[i]) + bs[i], 0.0)
        # With a dueling head the last layer is the advantage head: V and the mean of A do not change the argmax.
        q = np.matmul(h, ws[-1])
        q += bs[-1]
        return q[:, 0, :]

    def act(self, obs: np.ndarray, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions, each seed exploring with its own generator.

        Seed k's two uniforms per step (explore?, which action) come from seed k's generator in blocks of
        ``EXPLORE_BLOCK`` steps: one generator call per seed per block instead of a Python loop over seeds per step.
        """
        actions = self.greedy(obs)
        if self._explore_pos >= self._explore.shape[1]:
            self._explore = np.stack([rng.random((EXPLORE_BLOCK, 2)) for rng in self.explore_rngs])
            self._explore_pos = 0
        u = self._explore[:, self._explore_pos]
        self._explore_pos += 1
        return np.where(u[:, 0] < epsilon, (u[:, 1] * self.n_actions).astype(np.int64), actions)

    @torch.inference_mode()
    def update(self, batch: Transitions) -> None:
        """One gradient step on a batch ``(K, B)`` of transitions; the target network is synced on schedule."""
        cfg = self.cfg
        k, b = batch.t.shape
        self._idx_t[:, :b] = batch.t
        self._idx_t[:, b:] = batch.next_t
        self._idx_p[:, :b] = batch.pos
        self._idx_p[:, b:] = batch.next_pos
        self.market.observe(self._idx_t.reshape(-1), self._idx_p.reshape(-1), out=self._obs_np.reshape(k * 2 * b, -1))
        x = self._tensor(self._obs_np)
        actions = self._tensor(batch.action).unsqueeze(-1)
        ret = self._tensor(batch.ret)
        discount = self._tensor(batch.discount)
        # Double DQN picks next actions with the online network: one forward covers both halves. Plain DQN needs
        # the online network on the observations only.
        q_all, cache = self.net.forward_cached(x if cfg.double else x[:, :b])
        q_next_target = self.net.forward(x[:, b:], self.target_w, self.target_b)
        if cfg.double:
            best = q_all[:, b:].argmax(dim=-1, keepdim=True)
            q_next = q_next_target.gather(-1, best).squeeze(-1)
        else:
            q_next = q_next_target.max(dim=-1).values
        y = torch.addcmul(ret, discount, q_next)
        q = q_all[:, :b].gather(-1, actions).squeeze(-1)
        diff = q - y
        if cfg.loss == "huber":  # smooth L1 with beta 1, as SB3 and torch's F.smooth_l1_loss
            c = diff.clamp(-1.0, 1.0)
            per = c.mul(diff.sub(c, alpha=0.5)).mean(dim=1)  # c * (d - c/2): d^2/2 inside [-1, 1], |d| - 1/2 outside
            dq_a = c.div_(b)
        else:
            per = diff.square().mean(dim=1)
            dq_a = diff.mul(2.0 / b)
        self.net.backward(cache, self._dq.zero_().scatter_(-1, actions, dq_a.unsqueeze(-1)), self._grad_views)
        if cfg.max_grad_norm is not None:
            # Clip each seed's own gradient norm (clipping all parameters together would couple the seeds).
            norm = torch.linalg.vector_norm(self.grad, dim=1, keepdim=True)
            self.grad.mul_((cfg.max_grad_norm / (norm + 1e-6)).clamp_(max=1.0))
        self._adam_step()
        self.updates += 1
        if self.updates % cfg.target_update_freq == 0:
            self.sync_target()
        # Statistics stay on the device until read: a .cpu() per update would cost more than the Adam step.
        self._stats[0].add_(per)
        self._stats[1].add_(q.mean(dim=1))
        self._stats_n += 1

    def pop_stats(self) -> UpdateStats | None:
        """Mean loss and mean Q per seed over the updates since the last call (None if there were none)."""
        if self._stats_n == 0:
            return None
        s = (self._stats / self._stats_n).cpu().numpy()
        self._stats.zero_()
        self._stats_n = 0
        return UpdateStats(s[0], s[1])

    def _adam_step(self) -> None:
        # Adam (Kingma and Ba 2015) as torch.optim.Adam computes it, on the flat (K, P) tensors.
        b1, b2 = self.ADAM_BETAS
        step = self.updates + 1
        self.exp_avg.lerp_(self.grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(self.grad, self.grad, value=1 - b2)
        bc1 = 1 - b1**step
        bc2_sqrt = math.sqrt(1 - b2**step)
        denom = self.exp_avg_sq.sqrt().div_(bc2_sqrt).add_(self.ADAM_EPS)
        self.net.flat.addcdiv_(self.exp_avg, denom, value=-self.cfg.learning_rate / bc1)

    @torch.inference_mode()
    def sync_target(self) -> None:
        """Target <- tau * online + (1 - tau) * target (a copy when tau is 1)."""
        if self.cfg.tau >= 1.0:
            self.target_flat.copy_(self.net.flat)
        else:
            self.target_flat.lerp_(self.net.flat, self.cfg.tau)

    def state_dict(self) -> dict:
        """Networks, optimiser moments, exploration generators and counters."""
        return {"online": self.net.flat.cpu().clone(), "target": self.target_flat.cpu().clone(),
                "exp_avg": self.exp_avg.cpu().clone(), "exp_avg_sq": self.exp_avg_sq.cpu().clone(),
                "updates": self.updates, "explore_rngs": [r.bit_generator.state for r in self.explore_rngs],
                "explore_block": self._explore[:, self._explore_pos:].copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        for dst, key in ((self.net.flat, "online"), (self.target_flat, "target"), (self.exp_avg, "exp_avg"),
                         (self.exp_avg_sq, "exp_avg_sq")):
            if tuple(state[key].shape) != tuple(dst.shape):
                raise DqlrayError(f"checkpoint {key} has shape {tuple(state[key].shape)}, this network "
                                 f"{tuple(dst.shape)}: the checkpoint was made with another agent or window")
            dst.copy_(state[key])
        self.updates = int(state["updates"])
        for r, s in zip(self.explore_rngs, state["explore_rngs"], strict=True):
            r.bit_generator.state = s
        self._explore = state["explore_block"].copy()
        self._explore_pos = 0


class GreedyPolicy:
    """The learner's greedy policy with the evaluation ``predict(obs)`` interface (seed k acts on row k)."""

    def __init__(self, learner: DQNLearner) -> None:
        self.learner = learner

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions ``(K,)`` for observations ``(K, obs_dim)``."""
        return self.learner.greedy(obs)


class EnsemblePolicy:
    """The K seeds as one policy: the action with the highest Q-value averaged over the seeds (issue 12).

    Averaging Q-values (not votes) lets a seed that is sure outweigh one that is nearly indifferent, and with two
    actions it cannot tie on a vote. ``groups`` splits the learner's rows into several ensembles, environment ``g``
    acting with the rows in ``groups[g]`` (one ensemble per configuration of a pack); by default one ensemble of every
    row. With a dueling head each seed's scores are its advantages: the mean over seeds of ``V_k + A_k - mean(A_k)``
    and the mean of ``A_k`` differ by a constant over actions, so both pick the same action.
    """

    def __init__(self, learner: DQNLearner, groups: Sequence[Sequence[int]] | None = None) -> None:
        self.learner = learner
        groups = [range(learner.k)] if groups is None else groups
        rows = [np.asarray(g, dtype=np.int64) for g in groups]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("EnsemblePolicy: every group needs at least one row")
        flat = np.concatenate(rows)
        if len(np.unique(flat)) != len(flat) or flat.min() < 0 or flat.max() >= learner.k:
            raise ValueError(f"EnsemblePolicy: groups must be disjoint rows of 0..{learner.k - 1}")
        self.n_groups = len(rows)
        # Every row acts on its group's observation (rows in no group on group 0's; their scores are not used).
        self._obs_of_row = np.zeros(learner.k, dtype=np.int64)
        for g, r in enumerate(rows):
            self._obs_of_row[r] = g
        self._rows = flat
        self._starts = np.cumsum([0] + [len(r) for r in rows[:-1]])
        self._sizes = np.array([len(r) for r in rows], dtype=np.float64)[:, None]

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """Actions ``(G,)`` for observations ``(G, obs_dim)``, one per ensemble."""
        scores = self.learner.action_scores(np.asarray(obs)[self._obs_of_row])
        mean = np.add.reduceat(scores[self._rows], self._starts, axis=0) / self._sizes
        return mean.argmax(axis=-1)


def evaluation_policy(learner: DQNLearner, *, ensemble: bool) -> tuple[GreedyPolicy | EnsemblePolicy, int]:
    """The policy a run is scored as (``train.ensemble``) and its number of environments: every seed's greedy
    policy (K), or the seeds' ensemble (one policy)."""
    if ensemble:
        return EnsemblePolicy(learner), 1
    return GreedyPolicy(learner), learner.k
