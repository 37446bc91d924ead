"""The training loop, for one configuration or a pack of several trained as one batched network (issue 14).

A *member* is one configuration with one seed, a row of the learner; a pack holds M configurations x their seeds.
Inside a pack every member has its own learning rate, weight decay, discount, n-step length, exploration schedule,
target period, Polyak tau, clip norm, reward scale, loss, Double-DQN flag, hidden widths, dueling head, batch size
and budget (see :class:`~dqlray.dqn.DQNLearner` and :class:`~dqlray.replay.ReplayBuffer`), and trains exactly as it
would alone with the same seeds (``tests/test_pack.py``). What the pack steps or stores once must agree:
:func:`pack_conflict` says why two configurations cannot share a pack, :func:`group_configs` groups a list.

:class:`PackRun` is the loop. :func:`dqlray.trainer.train` runs a pack of one configuration through it; the sweep's
trainable runs packs of many. Configurations leave the pack (their rows leave the batch, so its compute shrinks)
at their own budget, when stopped (early stopping), or when their loss stops being finite.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from dqlray.config import SECTIONS, ExperimentConfig
from dqlray.data import OHLCV
from dqlray.dqn import evaluation_policy, linear_epsilon
from dqlray.errors import ConfigError, DqlrayError
from dqlray.evaluation import EvalResult, evaluate_policy
from dqlray.market import Market
from dqlray.parts import build_market, build_parts
from dqlray.vec_env import VecTradingEnv

MEMBER_FIELDS: dict[str, tuple[str, ...]] = {
    "agent": ("agent_type", "hidden", "learning_rate", "gamma", "batch_size", "target_update_freq", "tau", "n_step",
              "reward_scale", "loss", "max_grad_norm", "eps_start", "eps_end", "eps_decay_fraction", "weight_decay"),
    "train": ("experiment_name", "seed", "num_seeds", "episodes", "select"),
}
"""Fields that may differ between the configurations of one pack (``agent.hidden``: widths, not depth). Every other
field is a group key: the pack shares it."""

_WHY = {
    "data": "members share one market (data, split and window)",
    "env": "members share one vectorised environment",
    "agent.hidden": "members share the network's depth (widths may differ)",
    "agent.buffer_size": "the replay capacity is per pack",
    "agent.learning_starts": "the pack starts learning for all members at once",
    "agent.train_freq": "the pack updates all members at once",
    "agent.gradient_steps": "the pack updates all members at once",
    "train": "a setting of the pack's whole run",
}

FINISHED, STOPPED, DIVERGED, ACTIVE = "finished", "stopped", "diverged", "active"
"""How a configuration left its pack: at its budget, stopped early, or with a non-finite loss (or not yet)."""


class TrainingDiverged(DqlrayError):
    """The loss became non-finite: the run stops (its earlier checkpoints stay) instead of training on NaNs."""


def _group_values(config: ExperimentConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sec in SECTIONS:
        part = getattr(config, sec)
        for f in fields(part):
            if f.name not in MEMBER_FIELDS.get(sec, ()):
                out[f"{sec}.{f.name}"] = getattr(part, f.name)
    out["agent.hidden"] = len(config.agent.hidden)  # the depth; widths are padded
    return out


def pack_key(config: ExperimentConfig) -> tuple:
    """What configurations sharing a pack must have in common (hashable)."""
    return tuple(sorted(_group_values(config).items()))


def pack_conflict(a: ExperimentConfig, b: ExperimentConfig) -> str | None:
    """None if ``a`` and ``b`` can share a pack, else a one-line reason naming the first field that differs."""
    va, vb = _group_values(a), _group_values(b)
    for key, x in va.items():
        y = vb[key]
        if x != y:
            sec = key.split(".", 1)[0]
            why = _WHY.get(key) or _WHY.get(sec, "the pack shares it")
            if key == "agent.hidden":
                x, y = f"depth {x} {list(a.agent.hidden)}", f"depth {y} {list(b.agent.hidden)}"
            return f"{key} differs ({x} vs {y}): {why}"
    return None


def pack_problem(configs: Sequence[ExperimentConfig]) -> str | None:
    """None if all ``configs`` can share one pack, else a one-line reason."""
    if not configs:
        return "a pack needs at least one configuration"
    for i, c in enumerate(configs[1:], start=1):
        why = pack_conflict(configs[0], c)
        if why is not None:
            return f"configuration {i} cannot join configuration 0: {why}"
    return None


def _shape_cost(hidden: Sequence[int], batch: int, dueling: bool, obs_dim: int = 64) -> float:
    widths = [obs_dim, *hidden, 3]
    return float(batch * (sum(a * b for a, b in itertools.pairwise(widths)) + (hidden[-1] if dueling else 0)))


def compute_cost(config: ExperimentConfig | Sequence[ExperimentConfig]) -> float:
    """Multiply-adds of one member's forward pass over its batch, roughly (batch x weights); of several
    configurations, the cost of the padded member a pack of them makes (the widest layers and the largest batch)."""
    cfgs = [config] if isinstance(config, ExperimentConfig) else list(config)
    hidden = [max(c.agent.hidden[i] for c in cfgs) for i in range(len(cfgs[0].agent.hidden))]
    return _shape_cost(hidden, max(c.agent.batch_size for c in cfgs), any(c.agent.dueling for c in cfgs))


PACK_OVERHEAD = 4.0e6
"""A pack's fixed cost per env step, in :func:`compute_cost` units: Python and kernel dispatch of its acting,
environment, replay and update steps. Fitted to packs of 1 to 32 same-shaped configurations x 2 seeds on one CPU core
(widths 32 and 64, ``train_freq`` 4; ``bench/README.md``, issue 14): about 240 us per env step per pack, 6 us per
member, and 5.8e-5 us per unit of a member's padded compute."""
MEMBER_OVERHEAD = 1.0e5
"""A member's fixed cost per env step, in the same units (about 6 us)."""


def pack_cost(configs: Sequence[ExperimentConfig], member_share: float = 1.0) -> float:
    """Estimated time of one env step of a pack of ``configs`` (each with its seeds, and its share of a gradient step),
    in :func:`compute_cost` units: what splitting a group into packs trades (one pack's overhead against padding
    everyone to the widest layers and the largest batch).

    ``member_share``: the share of the pack's steps a member trains on average. With early stopping (ASHA) most
    members leave early while the pack, and its overhead, runs on for the survivors, so the members' part of the
    cost shrinks and fewer, larger packs pay (:func:`dqlray.tuning.rungs.budget_share`)."""
    rows = sum(c.train.num_seeds for c in configs)
    return PACK_OVERHEAD + member_share * rows * (MEMBER_OVERHEAD + compute_cost(configs))


def _split(configs: Sequence[ExperimentConfig], idx: list[int], max_configs: int,
           member_share: float = 1.0) -> list[list[int]]:
    """``idx`` (ordered by compute cost) cut into consecutive packs of at most ``max_configs`` with the least total
    :func:`pack_cost` (dynamic programming over the cut points); among equal costs, packs of more even sizes."""
    n = len(idx)
    agents = [configs[k].agent for k in idx]
    seeds = [configs[k].train.num_seeds for k in idx]
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        hidden = [0] * len(agents[0].hidden)
        batch, dueling, rows = 0, False, 0
        for i in range(j - 1, max(j - max_configs, 0) - 1, -1):  # the pack idx[i:j], grown one member at a time
            a = agents[i]
            hidden = [max(x, y) for x, y in zip(hidden, a.hidden, strict=True)]
            batch, dueling, rows = max(batch, a.batch_size), dueling or a.dueling, rows + seeds[i]
            cost = PACK_OVERHEAD + member_share * rows * (MEMBER_OVERHEAD + _shape_cost(hidden, batch, dueling))
            c = best[i] + cost * (1 + 1e-9 * (j - i) ** 2)  # a vanishing penalty: equal costs, even sizes
            if c < best[j]:
                best[j], cut[j] = c, i
    packs = []
    j = n
    while j > 0:
        packs.append(idx[cut[j]:j])
        j = cut[j]
    return packs[::-1]


def group_configs(configs: Sequence[ExperimentConfig], max_configs: int | None = None,
                  member_share: float = 1.0) -> list[list[int]]:
    """Indices of ``configs`` grouped into packs: one group per :func:`pack_key`, in order of first appearance; with
    ``max_configs``, each group is ordered by :func:`compute_cost` (stably) and cut into packs of at most that many
    configurations where :func:`pack_cost` (with ``member_share``) says the cut pays: configurations of similar
    widths and batch sizes share a pack, and a pack is not padded far beyond what its members need."""
    if max_configs is not None and max_configs < 1:
        raise ValueError(f"max_configs={max_configs} must be >= 1")
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(pack_key(c), []).append(i)
    if max_configs is None:
        return list(groups.values())
    packs = []
    for idx in groups.values():
        packs += _split(configs, sorted(idx, key=lambda i: compute_cost(configs[i])), max_configs, member_share)
    return packs


def steps_per_episode(config: ExperimentConfig, market: Market) -> int:
    """Env steps per seed that make one episode of the budget."""
    a, b = market.part("train")
    return config.env.episode_length or (b - a - 1)


def validation_summary(per_seed: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and spread over seeds of the validation Sharpe and return, from each seed's metrics."""
    sharpes = np.array([m["sharpe"] for m in per_seed])
    rets = np.array([m["total_return"] for m in per_seed])
    return {
        "val_sharpe": float(sharpes.mean()),
        "val_sharpe_std": float(sharpes.std(ddof=1)) if len(sharpes) > 1 else 0.0,
        "val_sharpe_min": float(sharpes.min()),
        "val_return": float(rets.mean()),
        "val_return_std": float(rets.std(ddof=1)) if len(rets) > 1 else 0.0,
    }


def evaluate_validation(learner: Any, market: Market, config: ExperimentConfig,
                        groups: Sequence[Sequence[int]] | None = None) -> EvalResult:
    """Every member's greedy policy over the validation part, all members in one vectorised pass; with
    ``train.ensemble``, one ensemble per group of rows (``groups``, default all rows: a configuration's seeds), one
    result row each."""
    policy, n_envs = evaluation_policy(learner, ensemble=config.train.ensemble, groups=groups)
    return evaluate_policy(policy, market, part="val", env=config.env, n_envs=n_envs, name="agent",
                           periods=config.train.periods_per_year)


def diverged_message(config: ExperimentConfig, episode: int, loss: np.ndarray) -> str:
    """The one line naming the episode, the seeds whose loss is not finite, and the likely cause."""
    bad = ~np.isfinite(loss)
    ac = config.agent
    seeds = [s for s, b in zip(config.train.seeds, bad, strict=True) if b]
    return (f"training diverged at episode {episode}: the loss is {loss[bad][0]} for seed(s) "
            f"{', '.join(map(str, seeds))}; likely agent.learning_rate={ac.learning_rate:g} is too large (or "
            f"agent.reward_scale={ac.reward_scale:g}, agent.max_grad_norm={ac.max_grad_norm})")


_ENV_FIELDS = ("t", "end", "pos", "value", "ep_return")


def env_state(venv: VecTradingEnv) -> dict:
    """The environments' positions, values and generators (for a checkpoint)."""
    out = {name: getattr(venv, name).copy() for name in _ENV_FIELDS}
    out["rngs"] = [r.bit_generator.state for r in venv.rngs]
    return out


def load_env_state(venv: VecTradingEnv, state: dict) -> None:
    """Restore :func:`env_state`."""
    for name in _ENV_FIELDS:
        setattr(venv, name, state[name].copy())
    for r, s in zip(venv.rngs, state["rngs"], strict=True):
        r.bit_generator.state = s


@dataclass
class MemberResult:
    """One configuration of a pack: its per-episode metrics, evaluations and, once it has left, its learner state."""

    config: ExperimentConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict | None = None
    """:meth:`DQNLearner.member_state` of the configuration's seeds when it left the pack: loads into a learner of
    that configuration alone."""
    status: str = ACTIVE
    """:data:`ACTIVE` until it leaves the pack as :data:`FINISHED`, :data:`STOPPED` or :data:`DIVERGED`."""
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    """Every validation evaluation: ``{"episodes": e, "val_sharpe": ..., ...}``."""
    val_returns: np.ndarray | None = None
    """Per-bar validation returns of the last evaluation, ``(T_val, K)`` (one column per seed; issue 11)."""
    selected: dict[str, Any] | None = None
    """With ``train.select`` other than ``last``: the evaluation with the best value so far, ``{"episodes",
    "val" (its validation summary), "val_returns", "state" (its member state)}``."""

    @property
    def stopped_early(self) -> bool:
        """Stopped before its budget by an early-stopping rule."""
        return self.status == STOPPED

    def kept(self) -> tuple[dict | None, dict[str, float], np.ndarray | None, int | None]:
        """What the configuration keeps for its test evaluation (``train.select``): learner state, validation
        summary, per-bar validation returns and the episode they come from."""
        if self.selected is not None:
            s = self.selected
            return s.get("state"), s["val"], s.get("val_returns"), s["episodes"]
        last = self.evaluations[-1] if self.evaluations else {}
        return self.state, {k: v for k, v in last.items() if k != "episodes"}, self.val_returns, last.get("episodes")

    def to_state(self, arrays: bool = True) -> dict:
        """Plain data for a checkpoint; without ``arrays``, only its metrics (no networks, no validation returns:
        for a configuration whose record is already written elsewhere)."""
        selected = self.selected
        if not arrays and selected is not None:
            selected = {k: v for k, v in selected.items() if k not in ("state", "val_returns")}
        return {"history": list(self.history), "state": self.state if arrays else None, "status": self.status,
                "evaluations": list(self.evaluations), "val_returns": self.val_returns if arrays else None,
                "selected": selected}

    def load(self, s: dict) -> None:
        """Restore :meth:`to_state`."""
        self.history, self.state, self.status = list(s["history"]), s["state"], s["status"]
        self.evaluations, self.val_returns, self.selected = list(s["evaluations"]), s["val_returns"], s["selected"]


class PackRun:
    """Train ``configs`` (each with its own seeds) as one pack, episode by episode.

    Member k's environment, replay sampling, exploration and initialisation derive from its seed alone, so a
    configuration's run inside a pack equals its run alone. A configuration whose loss is no longer finite leaves
    the pack as :data:`DIVERGED` (``on_diverged="stop"``), or raises :class:`TrainingDiverged`
    (``on_diverged="raise"``, a single run's behaviour).
    """

    def __init__(self, configs: Sequence[ExperimentConfig], data: OHLCV | None = None, *,
                 market: Market | None = None, on_diverged: str = "stop") -> None:
        problem = pack_problem(configs)
        if problem is not None:
            raise ConfigError(f"pack: {problem}")
        if on_diverged not in ("stop", "raise"):
            raise ValueError(f"on_diverged={on_diverged!r}: stop or raise")
        self.configs = list(configs)
        self.on_diverged = on_diverged
        first = self.configs[0]
        torch.set_num_threads(first.train.torch_threads)
        if market is None:
            if data is None:
                raise ValueError("PackRun needs data or a market")
            market = build_market(first, data)
        self.market = market
        self.row_config = np.array([ci for ci, c in enumerate(self.configs) for _ in c.train.seeds], dtype=np.int64)
        parts = build_parts(self.configs, market)
        self.venv, self.learner, self.buffer = parts.env, parts.learner, parts.buffer
        self.per_episode = steps_per_episode(first, market)
        self.budget = np.array([c.train.episodes * self.per_episode for c in self.configs], dtype=np.int64)
        self.results = [MemberResult(c) for c in self.configs]
        self.last_val: list[dict[str, float]] = [{} for _ in self.configs]
        self.rows_held_by: int | None = None
        """Once every configuration has left: the one whose rows the learner still holds (the last to leave)."""
        self.episodes_done = np.zeros(len(self.configs))
        self.env_steps = 0
        self.episode = 0
        self.fill_until = first.agent.learning_starts  # no gradient step before this many env steps (per seed)
        self.obs = self.venv.reset()
        self._t_start = time.perf_counter()
        self._rows_changed()

    def _rows_changed(self) -> None:
        """Values of the loop that depend on who is in the pack: the scalar fast paths when every member agrees."""
        ln = self.learner
        self._batch: int | tuple[int, ...] = (ln.batch_sizes[0] if len(set(ln.batch_sizes)) == 1
                                              else ln.batch_sizes)
        agents = [self.configs[ci].agent for ci in self.row_config]
        budgets = self.budget[self.row_config]
        eps = {(a.eps_start, a.eps_end, a.eps_decay_fraction) for a in agents}
        self._eps_scalar = None
        if len(eps) == 1 and len(set(budgets.tolist())) <= 1:
            a = agents[0] if agents else self.configs[0].agent
            self._eps_scalar = (int(budgets[0]) if len(budgets) else 0, a.eps_start, a.eps_end, a.eps_decay_fraction)
        self._budget_rows = budgets

    @property
    def active(self) -> list[int]:
        """Indices of the configurations still in the pack."""
        return sorted(set(self.row_config.tolist()))

    def rows_of(self, ci: int) -> np.ndarray:
        """The learner rows of configuration ``ci`` (empty once it has left)."""
        return np.flatnonzero(self.row_config == ci)

    def run_episode(self) -> dict[int, dict[str, Any]]:
        """One episode of env steps for every member; returns each active configuration's metrics (see
        :func:`dqlray.trainer.train`). Configurations that reach their budget, or whose loss is no longer finite,
        leave the pack afterwards."""
        # A diverging network overflows in the greedy NumPy forward pass (acting and validation) before its loss is
        # checked at the end of the episode; the check reports it, so the overflow warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._run_episode()

    def _run_episode(self) -> dict[int, dict[str, Any]]:
        first = self.configs[0]
        ac = first.agent
        ln, buf, venv = self.learner, self.buffer, self.venv
        ret_sum = np.zeros(ln.k)
        ret_n = np.zeros(ln.k)
        obs, env_steps = self.obs, self.env_steps
        eps_scalar, budget_rows, batch = self._eps_scalar, self._budget_rows, self._batch
        fill_until, train_freq, gradient_steps = self.fill_until, ac.train_freq, ac.gradient_steps
        t_ep = time.perf_counter()
        for _ in range(self.per_episode):
            if eps_scalar is not None:
                eps = linear_epsilon(env_steps, eps_scalar[0], eps_scalar[1], eps_scalar[2], eps_scalar[3])
            else:
                eps = ln.epsilon(env_steps, budget_rows)
            actions = ln.act(obs, eps)
            t = venv.t.copy()
            pos = venv.pos
            step = venv.step(actions)
            buf.add(t, pos, actions, step.reward, step.terminated, step.truncated)
            obs = step.obs
            env_steps += 1
            if step.any_done:
                fin = ~np.isnan(step.episode_return)
                ret_sum[fin] += step.episode_return[fin]
                ret_n += fin
            if env_steps >= fill_until and env_steps % train_freq == 0:
                for _g in range(gradient_steps):
                    ln.update(buf.sample(batch))
        self.obs, self.env_steps = obs, env_steps
        self.episode += 1
        elapsed = time.perf_counter() - t_ep
        stats = ln.pop_stats()
        active = self.active
        diverged = []
        if stats is not None and not np.isfinite(stats.loss).all():
            for ci in active:
                loss = stats.loss[self.rows_of(ci)]
                if not np.isfinite(loss).all():
                    if self.on_diverged == "raise":
                        raise TrainingDiverged(diverged_message(self.configs[ci], self.episode, loss))
                    diverged.append(ci)
        out = {}
        for ci in active:
            rows = self.rows_of(ci)
            a = self.configs[ci].agent
            n = ret_n[rows].sum()
            self.episodes_done[ci] += n
            out[ci] = {
                "episodes": self.episode,
                "env_steps": env_steps,
                "episodes_completed": self.episodes_done[ci] / len(rows),
                "episode_return": float(ret_sum[rows].sum() / n) if n else float("nan"),
                "loss": float(stats.loss[rows].mean()) if stats is not None else float("nan"),
                "mean_q": float(stats.mean_q[rows].mean()) if stats is not None else float("nan"),
                "epsilon": float(linear_epsilon(env_steps, int(self.budget[ci]), a.eps_start, a.eps_end,
                                                a.eps_decay_fraction)),
                "updates": ln.updates,
                "steps_per_s": self.per_episode * len(rows) / max(elapsed, 1e-9),
            }
        if diverged:
            self.stop(diverged, status=DIVERGED)
        due = [ci for ci in self.active if self.episode % first.train.eval_every == 0
               or self.episode >= self.configs[ci].train.episodes]
        if due:
            self._evaluate(due)
        for ci, m in out.items():
            m.update(self.last_val[ci])
            m["time_total_s"] = time.perf_counter() - self._t_start
            self.results[ci].history.append(m)
        self.stop([ci for ci in self.active if self.episode >= self.configs[ci].train.episodes], status=FINISHED)
        return out

    def _evaluate(self, due: list[int]) -> None:
        """Validation of every member in one pass; each due configuration records it (and keeps its best)."""
        active = list(self.active)
        ensemble = self.configs[0].train.ensemble  # a group key: the whole pack or none of it
        res = evaluate_validation(self.learner, self.market, self.configs[0],
                                  [self.rows_of(ci) for ci in active] if ensemble else None)
        returns = res.returns
        for ci in due:
            rows = self.rows_of(ci)
            out = [active.index(ci)] if ensemble else rows  # its rows of the evaluation
            val = validation_summary([res.metrics[r] for r in out])
            self.last_val[ci] = val
            r = self.results[ci]
            r.evaluations.append({"episodes": self.episode, **val})
            r.val_returns = returns[out].T.copy()
            select = self.configs[ci].train.select
            if select != "last":
                key = select.removeprefix("best_")
                best = r.selected["val"][key] if r.selected is not None else None
                if best is None or (np.isfinite(val[key]) and (not np.isfinite(best) or val[key] > best)):
                    r.selected = {"episodes": self.episode, "val": dict(val), "val_returns": r.val_returns,
                                  "state": self.learner.member_state(rows)}

    def stop(self, config_ids: Sequence[int], *, status: str = STOPPED) -> dict[int, dict]:
        """Take configurations out of the pack; returns (and keeps in :attr:`results`) each one's learner state.

        Their rows leave the learner, the replay buffer and the environments, so the pack's compute shrinks; the
        others continue exactly as before.
        """
        out = {}
        for ci in sorted(set(config_ids)):
            rows = self.rows_of(ci)
            if len(rows) == 0:
                continue
            if len(rows) == self.learner.k:  # the last configuration: nothing remains to train
                state = self.learner.member_state(rows)
                self.rows_held_by = ci  # its rows stay in the learner (a single run is evaluated with them)
            else:
                state = self.learner.remove_members(rows)
                self.buffer.remove_members(rows)
                keep = np.flatnonzero(self.row_config != ci)
                self.venv.keep_envs(keep)
                self.obs = self.venv.observe()
            self.row_config = self.row_config[self.row_config != ci]
            self.results[ci].state = state
            self.results[ci].status = status
            out[ci] = state
        if out:
            self._rows_changed()
        return out

    def state_dict(self, include_buffer: bool = True, departed_arrays: bool = True) -> dict:
        """Everything needed to continue the pack exactly (the replay buffer's data unless ``include_buffer`` is
        False: a pack resumed without it refills before it learns again). Without ``departed_arrays``, the
        configurations that have left keep only their metrics (a sweep writes their networks and validation returns
        to their own records as they leave, so its checkpoints need not carry them again)."""
        results = [r.to_state(departed_arrays or r.status == ACTIVE) for r in self.results]
        return {"learner": self.learner.state_dict(), "buffer": self.buffer.state_dict(include_buffer),
                "env": env_state(self.venv), "env_steps": self.env_steps, "episode": self.episode,
                "fill_until": self.fill_until, "row_config": self.row_config.copy(), "rows_held_by": self.rows_held_by,
                "episodes_done": self.episodes_done.copy(), "last_val": [dict(v) for v in self.last_val],
                "results": results, "configs": [c.to_dict() for c in self.configs],
                "elapsed_s": time.perf_counter() - self._t_start}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (a new :class:`PackRun` of the same configurations)."""
        if "row_config" not in state or "configs" not in state:
            raise DqlrayError("the checkpoint was written by an older dqlray (before packed training); start the "
                              "run again")
        if state["configs"] != [c.to_dict() for c in self.configs]:
            raise ConfigError("pack checkpoint was made with other configurations")
        # The configurations that had left leave again, so that the rows that remain are laid out as they were in
        # the checkpoint: when every one had left, those of the one that left last (a single run's final checkpoint,
        # whose learner a resumed run is evaluated with), which therefore leaves last here too. A checkpoint from
        # before rows_held_by was kept had them from the last index, the order stop() takes.
        remaining = set(np.asarray(state["row_config"]).tolist())
        holder = None if remaining else state.get("rows_held_by", len(self.configs) - 1)
        self.stop([ci for ci in self.active if ci not in remaining and ci != holder])
        if holder is not None:
            self.stop([holder])
        self.learner.load_state_dict(state["learner"])
        self.buffer.load_state_dict(state["buffer"])
        load_env_state(self.venv, state["env"])
        self.obs = self.venv.observe()
        self.env_steps, self.episode = int(state["env_steps"]), int(state["episode"])
        self.fill_until = int(state["fill_until"])
        if "arrays" not in state["buffer"]:  # resumed without its replay data: refill before learning again
            self.fill_until = self.env_steps + self.configs[0].agent.learning_starts
        self.episodes_done = np.array(state["episodes_done"], dtype=float)
        self.last_val = [dict(v) for v in state["last_val"]]
        for r, s in zip(self.results, state["results"], strict=True):
            r.load(s)
        # time_total_s goes on from where the checkpoint was taken (a resumed pack's clock does not restart at 0)
        self._t_start = time.perf_counter() - float(state.get("elapsed_s", 0.0))


def train_pack(configs: Sequence[ExperimentConfig], data: OHLCV, *,
               should_stop: Callable[[int, dict[str, Any]], bool] | None = None) -> list[MemberResult]:
    """Train ``configs`` as one pack until every configuration has reached its budget or been stopped.

    ``should_stop(index, metrics)`` is asked after every episode for each configuration still in the pack (an early
    stopping rule such as ASHA's); a configuration it stops leaves the pack with its state.
    """
    run = PackRun(configs, data)
    while run.active:
        metrics = run.run_episode()
        if should_stop is not None:
            run.stop([ci for ci, m in metrics.items() if ci in run.active and should_stop(ci, m)])
    return run.results
