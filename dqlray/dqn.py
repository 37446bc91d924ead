"""The DQN update for K members at once (Mnih et al. 2015; Double DQN, van Hasselt et al. 2016).

A member is one configuration with one seed: K seeds of one configuration (a training run), or several
configurations with their seeds (a pack, issue 14). Members never interact: the loss is the sum of the members'
mean losses (so each member's gradient is its own), gradients are clipped per member, and Adam is elementwise. A
K-member learner therefore follows the same trajectory as K one-member learners, up to floating-point order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

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


def linear_epsilon(step: int, total: Any, start: Any, end: Any, fraction: Any) -> Any:
    """Exploration rate after ``step`` env steps of ``total``: linear from ``start`` to ``end`` over ``fraction`` of
    the budget, then constant. Scalars, or NumPy arrays (one value per member of a pack)."""
    if isinstance(total, int) and isinstance(fraction, float):  # the trainer's per-step call: no NumPy overhead
        frac = min(step / max(fraction * total, 1.0), 1.0)
    else:
        frac = np.minimum(step / np.maximum(fraction * total, 1.0), 1.0)
    return start + frac * (end - start)


def _uniform_or_column(values: Sequence[float], device: torch.device, dtype: torch.dtype = torch.float32
                       ) -> float | torch.Tensor:
    """A Python float when every member has the same value (today's scalar code path, and its speed), else a
    ``(K, 1)`` tensor."""
    v = np.asarray(values, dtype=np.float64)
    if (v == v[0]).all():
        return float(v[0])
    return torch.tensor(v, dtype=dtype, device=device).unsqueeze(1)


class DQNLearner:
    """Online and target Q-networks, the optimiser, and exploration for K members.

    Parameters, gradients, Adam moments and the target are ``(K, P)`` tensors, so the optimiser step, the per-member
    gradient clipping and the target sync are a few tensor operations each (see :mod:`dqlray.networks`).

    A member is one configuration with one seed. ``cfg`` is one :class:`AgentConfig` for every member (K seeds of one
    configuration, as a training run has) or one per member: a pack of several configurations (issue 14). Each
    member then has its own learning rate, weight decay, discount and n-step length (applied by the replay buffer),
    exploration schedule, target period and Polyak weight, gradient-clipping norm, loss, Double-DQN flag, hidden
    widths, dueling head and batch size: widths and batches are padded to the pack's largest and masked, so every
    member follows the trajectory it would follow alone (``tests/test_pack.py``). Values shared by every member use
    the scalar code path of a single configuration.
    """

    ADAM_BETAS = (0.9, 0.999)
    ADAM_EPS = 1e-8

    def __init__(self, cfg: AgentConfig | Sequence[AgentConfig], market: Market, n_actions: int,
                 seeds: Sequence[int], explore_seeds: Sequence[np.random.SeedSequence | int],
                 device: torch.device) -> None:
        cfgs = [cfg] * len(seeds) if isinstance(cfg, AgentConfig) else list(cfg)
        if len(cfgs) != len(seeds) or len(explore_seeds) != len(seeds):
            raise ValueError(f"{len(cfgs)} agent configs and {len(explore_seeds)} exploration seeds for "
                             f"{len(seeds)} members")
        self.market = market
        self.n_actions = n_actions
        self.device = device
        self.seeds = tuple(int(s) for s in seeds)
        net = BatchedMLP(market.obs_dim, n_actions, [c.hidden for c in cfgs], self.seeds,
                         dueling=[c.dueling for c in cfgs], device=device)
        self.explore_rngs = [np.random.default_rng(s) for s in explore_seeds]
        self._explore = np.empty((len(seeds), 0, 2))
        self._explore_pos = 0
        self.updates = 0
        self._setup(cfgs, net, net.flat.clone(), torch.zeros_like(net.flat), torch.zeros_like(net.flat))

    def _setup(self, cfgs: list[AgentConfig], net: BatchedMLP, target: torch.Tensor, exp_avg: torch.Tensor,
               exp_avg_sq: torch.Tensor) -> None:
        """Per-member values and work buffers for members ``cfgs`` (at construction and after members leave)."""
        device = self.device
        self.cfgs = cfgs
        self.cfg = cfgs[0]  # the first member's (every member's, outside a pack)
        self.k = len(cfgs)
        self.net = net
        self.target_flat = target
        self.target_w, self.target_b = net.views(target)
        self.grad = torch.zeros_like(net.flat)
        self.exp_avg = exp_avg
        self.exp_avg_sq = exp_avg_sq
        k = self.k
        self.batch_sizes = tuple(c.batch_size for c in cfgs)
        b = max(self.batch_sizes)
        # Batches are padded to the pack's largest; a member's padded samples get a zero error, and its loss and
        # gradient are averaged over its own batch size (as alone).
        self._valid = None
        self._b_div: float | torch.Tensor = float(b)
        self._mse_scale: float | torch.Tensor = 2.0 / b
        if len(set(self.batch_sizes)) > 1:
            sizes = np.array(self.batch_sizes)
            self._valid = torch.from_numpy((np.arange(b)[None, :] < sizes[:, None]).astype(np.float32)).to(device)
            self._b_div = torch.tensor(sizes, dtype=torch.float32, device=device).unsqueeze(1)
            self._mse_scale = torch.tensor(2.0 / sizes, dtype=torch.float32, device=device).unsqueeze(1)
        lr = _uniform_or_column([c.learning_rate for c in cfgs], device, torch.float64)
        self._neg_lr = -lr  # the Adam step is -lr / bias_correction1: computed in float64, as Python does for one
        wd = np.array([c.weight_decay for c in cfgs])
        self._decay = None
        if (wd > 0).any():
            self._decay = _uniform_or_column([1 - c.learning_rate * c.weight_decay for c in cfgs], device)
        clip = [math.inf if c.max_grad_norm is None else c.max_grad_norm for c in cfgs]
        self._clip = None if all(math.isinf(x) for x in clip) else _uniform_or_column(clip, device)
        self._tau = _uniform_or_column([c.tau for c in cfgs], device)
        periods = np.array([c.target_update_freq for c in cfgs], dtype=np.int64)
        self._period: int | np.ndarray = int(periods[0]) if (periods == periods[0]).all() else periods
        double = np.array([c.double for c in cfgs])
        self._all_double, self._any_double = bool(double.all()), bool(double.any())
        self._double_col = torch.from_numpy(double).to(device).view(k, 1)
        huber = np.array([c.loss == "huber" for c in cfgs])
        self._all_huber, self._any_huber = bool(huber.all()), bool(huber.any())
        self._huber_col = torch.from_numpy(huber).to(device).view(k, 1)
        self.eps_start = np.array([c.eps_start for c in cfgs])
        self.eps_end = np.array([c.eps_end for c in cfgs])
        self.eps_decay_fraction = np.array([c.eps_decay_fraction for c in cfgs])
        # One preallocated buffer holds a batch's observations and next observations, (K, 2B, obs_dim): one gather
        # fills it and one forward pass of the online network covers both halves (Double DQN needs both).
        self._obs_np = np.empty((k, 2 * b, self.market.obs_dim), dtype=np.float32)
        self._idx_t = np.empty((k, 2 * b), dtype=np.int64)
        self._idx_p = np.empty((k, 2 * b), dtype=np.float32)
        self._dq = torch.zeros(k, b, self.n_actions, device=device)
        self._grad_views = net.views(self.grad)
        self._stats = torch.zeros(2, k, device=device)
        self._stats_n = 0
        self._np_weights = None
        if device.type == "cpu":
            self._np_weights = ([w.numpy() for w in net.weights], [b_.numpy() for b_ in net.biases])

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Greedy action of member k for observation ``obs[k]`` (``obs`` is ``(K, obs_dim)``)."""
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
        # One observation per member: a torch call costs ~5 us of dispatch, NumPy's ~1 us, and on the CPU the NumPy
        # arrays are views of the same memory as the torch parameters, so they are always current.
        ws, bs = self._np_weights
        h = obs[:, None, :]
        for i in range(self.net.n_hidden):
            h = np.maximum(np.matmul(h, ws[i]) + bs[i], 0.0)
        # With a dueling head the last layer is the advantage head: V and the mean of A do not change the argmax
        # (and a plain member's Q is its advantage branch).
        q = np.matmul(h, ws[-1])
        q += bs[-1]
        return q[:, 0, :]

    def epsilon(self, step: int, total_steps: int | np.ndarray) -> np.ndarray:
        """Each member's exploration rate ``(K,)`` after ``step`` env steps of its budget ``total_steps``."""
        return linear_epsilon(step, total_steps, self.eps_start, self.eps_end, self.eps_decay_fraction)

    def act(self, obs: np.ndarray, epsilon: float | np.ndarray) -> np.ndarray:
        """Epsilon-greedy actions, each member exploring with its own generator (and its own rate if an array).

        Member k's two uniforms per step (explore?, which action) come from member k's generator in blocks of
        ``EXPLORE_BLOCK`` steps: one generator call per member per block instead of a Python loop per step.
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
        """One gradient step on a batch ``(K, B)`` of transitions (B = the largest member batch size); the target
        network is synced on schedule."""
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
        q_all, cache = self.net.forward_cached(x if self._any_double else x[:, :b])
        q_next_target = self.net.forward(x[:, b:], self.target_w, self.target_b)
        if self._any_double:
            best = q_all[:, b:].argmax(dim=-1, keepdim=True)
            q_next = q_next_target.gather(-1, best).squeeze(-1)
            if not self._all_double:
                q_next = torch.where(self._double_col, q_next, q_next_target.max(dim=-1).values)
        else:
            q_next = q_next_target.max(dim=-1).values
        y = torch.addcmul(ret, discount, q_next)
        q = q_all[:, :b].gather(-1, actions).squeeze(-1)
        diff = q - y
        if self._valid is not None:
            diff.mul_(self._valid)  # padded samples: zero error, zero gradient
        if self._any_huber:  # smooth L1 with beta 1, as SB3 and torch's F.smooth_l1_loss
            c = diff.clamp(-1.0, 1.0)
            per = c.mul(diff.sub(c, alpha=0.5))  # c * (d - c/2): d^2/2 inside [-1, 1], |d| - 1/2 outside
            dq_a = c.div_(self._b_div)
        if not self._all_huber:
            per_mse = diff.square()
            dq_mse = diff.mul(self._mse_scale)
            if self._any_huber:
                per = torch.where(self._huber_col, per, per_mse)
                dq_a = torch.where(self._huber_col, dq_a, dq_mse)
            else:
                per, dq_a = per_mse, dq_mse
        self.net.backward(cache, self._dq.zero_().scatter_(-1, actions, dq_a.unsqueeze(-1)), self._grad_views)
        if self._clip is not None:
            # Clip each member's own gradient norm (clipping all parameters together would couple the members).
            # reciprocal() * max_norm is how torch evaluates "max_norm / tensor": a member computes what it would alone.
            norm = torch.linalg.vector_norm(self.grad, dim=1, keepdim=True)
            self.grad.mul_((norm + 1e-6).reciprocal_().mul_(self._clip).clamp_(max=1.0))
        self._adam_step()
        self.updates += 1
        if isinstance(self._period, int):
            if self.updates % self._period == 0:
                self.sync_target()
        else:
            due = self.updates % self._period == 0
            if due.any():
                self._sync_rows(due)
        # Statistics stay on the device until read: a .cpu() per update would cost more than the Adam step.
        if self._valid is None:
            self._stats[0].add_(per.mean(dim=1))
            self._stats[1].add_(q.mean(dim=1))
        else:
            self._stats[0].add_(per.sum(dim=1, keepdim=True).div_(self._b_div).squeeze(1))
            self._stats[1].add_(q.mul(self._valid).sum(dim=1, keepdim=True).div_(self._b_div).squeeze(1))
        self._stats_n += 1

    def pop_stats(self) -> UpdateStats | None:
        """Mean loss and mean Q per member over the updates since the last call (None if there were none)."""
        if self._stats_n == 0:
            return None
        s = (self._stats / self._stats_n).cpu().numpy()
        self._stats.zero_()
        self._stats_n = 0
        return UpdateStats(s[0], s[1])

    def _adam_step(self) -> None:
        # Adam (Kingma and Ba 2015) as torch.optim.Adam computes it, on the flat (K, P) tensors; with weight decay
        # as torch.optim.AdamW: the parameters shrink by 1 - lr * weight_decay before the step (decoupled).
        b1, b2 = self.ADAM_BETAS
        step = self.updates + 1
        if self._decay is not None:
            self.net.flat.mul_(self._decay)
        self.exp_avg.lerp_(self.grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(self.grad, self.grad, value=1 - b2)
        bc1 = 1 - b1**step
        bc2_sqrt = math.sqrt(1 - b2**step)
        denom = self.exp_avg_sq.sqrt().div_(bc2_sqrt).add_(self.ADAM_EPS)
        if isinstance(self._neg_lr, float):
            self.net.flat.addcdiv_(self.exp_avg, denom, value=self._neg_lr / bc1)
        else:
            # addcdiv computes self + (value * t1) / t2; with a step size per member the product comes first.
            step_size = (self._neg_lr / bc1).to(torch.float32)
            self.net.flat.addcdiv_(self.exp_avg * step_size, denom)

    def _synced(self) -> torch.Tensor:
        """What the target becomes at a sync: tau * online + (1 - tau) * target (the online network when tau is 1)."""
        if isinstance(self._tau, float) and self._tau >= 1.0:
            return self.net.flat
        return torch.lerp(self.target_flat, self.net.flat, self._tau)

    @torch.inference_mode()
    def sync_target(self) -> None:
        """Target <- tau * online + (1 - tau) * target for every member (a copy when tau is 1)."""
        if isinstance(self._tau, float):
            if self._tau >= 1.0:
                self.target_flat.copy_(self.net.flat)
            else:
                self.target_flat.lerp_(self.net.flat, self._tau)
        else:
            self.target_flat.copy_(self._synced())

    def _sync_rows(self, due: np.ndarray) -> None:
        """Sync the members whose own target period is due (a masked sync)."""
        mask = self._tensor(due).view(self.k, 1)
        self.target_flat.copy_(torch.where(mask, self._synced(), self.target_flat))

    def state_dict(self) -> dict:
        """Networks, optimiser moments, exploration generators and counters."""
        return {"online": self.net.flat.cpu().clone(), "target": self.target_flat.cpu().clone(),
                "exp_avg": self.exp_avg.cpu().clone(), "exp_avg_sq": self.exp_avg_sq.cpu().clone(),
                "updates": self.updates, "explore_rngs": [r.bit_generator.state for r in self.explore_rngs],
                "explore_block": self._explore[:, self._explore_pos:].copy(),
                "hidden": [list(h) for h in self.net.member_hidden], "dueling": self.net.member_dueling.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (of this learner, or :meth:`member_state` of a pack's members)."""
        for key, mine in (("hidden", [list(h) for h in self.net.member_hidden]),
                          ("dueling", self.net.member_dueling.tolist())):
            if key in state and [list(x) if isinstance(x, (list, tuple)) else x for x in state[key]] != mine:
                raise DqlrayError(f"checkpoint members have {key} {state[key]}, this learner {mine}: the checkpoint "
                                  "was made with another agent")
        for dst, key in ((self.net.flat, "online"), (self.target_flat, "target"), (self.exp_avg, "exp_avg"),
                         (self.exp_avg_sq, "exp_avg_sq")):
            if state[key].shape == (dst.shape[0], self.net.unaligned_size) != tuple(dst.shape):
                state = dict(state, **{key: self.net.from_unaligned(state[key])})  # a checkpoint made before issue 14
            if tuple(state[key].shape) != tuple(dst.shape):
                raise DqlrayError(f"checkpoint {key} has shape {tuple(state[key].shape)}, this network "
                                 f"{tuple(dst.shape)}: the checkpoint was made with another agent or window")
            dst.copy_(state[key])
        self.updates = int(state["updates"])
        for r, s in zip(self.explore_rngs, state["explore_rngs"], strict=True):
            r.bit_generator.state = s
        self._explore = state["explore_block"].copy()
        self._explore_pos = 0

    def member_state(self, rows: Sequence[int]) -> dict:
        """The :meth:`state_dict` of a learner that holds only members ``rows`` (laid out as they would be alone).

        A configuration that won inside a pack loads its rows' state into a learner of its own (its K seeds, or one
        member) and is evaluated or trained on from there exactly as if it had been trained alone.
        """
        rows = [int(r) for r in rows]
        sub = self.net.subset(rows, device="cpu")
        out = {key: sub.relayout(self.net, t.cpu(), rows) for key, t in
               (("online", self.net.flat), ("target", self.target_flat), ("exp_avg", self.exp_avg),
                ("exp_avg_sq", self.exp_avg_sq))}
        out.update({"updates": self.updates, "explore_rngs": [self.explore_rngs[r].bit_generator.state for r in rows],
                    "explore_block": self._explore[rows, self._explore_pos:].copy(),
                    "hidden": [list(sub.member_hidden[i]) for i in range(len(rows))],
                    "dueling": sub.member_dueling.tolist()})
        return out

    def remove_members(self, rows: Sequence[int]) -> dict:
        """Take members ``rows`` out of the learner and return their :meth:`member_state`.

        The remaining members keep their parameters, moments, target, generators and exploration draws; their rows
        (and each layer's width, if the widest members left) shrink, so the pack's compute shrinks with them.
        """
        gone = sorted({int(r) for r in rows})
        if not gone or gone[0] < 0 or gone[-1] >= self.k:
            raise ValueError(f"members {gone} out of range for {self.k} members")
        state = self.member_state(gone)
        keep = [r for r in range(self.k) if r not in set(gone)]
        if not keep:
            raise ValueError("cannot remove every member of a learner")
        net = self.net.subset(keep)
        net.flat.copy_(net.relayout(self.net, self.net.flat, keep))
        target, m1, m2 = (net.relayout(self.net, t, keep) for t in (self.target_flat, self.exp_avg, self.exp_avg_sq))
        self.explore_rngs = [self.explore_rngs[r] for r in keep]
        self._explore = self._explore[keep]
        self.seeds = tuple(self.seeds[r] for r in keep)
        stats = self._stats[:, keep].clone()
        stats_n = self._stats_n
        self._setup([self.cfgs[r] for r in keep], net, target, m1, m2)
        self._stats, self._stats_n = stats, stats_n
        return state


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


def evaluation_policy(learner: DQNLearner, *, ensemble: bool, groups: Sequence[Sequence[int]] | None = None
                      ) -> tuple[GreedyPolicy | EnsemblePolicy, int]:
    """The policy a run is scored as (``train.ensemble``) and its number of environments: every seed's greedy
    policy (K), or the seeds' ensemble (one policy; with ``groups``, one per group of rows, as in a pack)."""
    if ensemble:
        policy = EnsemblePolicy(learner, groups)
        return policy, policy.n_groups
    return GreedyPolicy(learner), learner.k
