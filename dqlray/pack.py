"""Packed trials (issue 14): several configurations, each with its seeds, trained as one batched network.

A *member* is one configuration with one seed, a row of the learner; a pack holds M configurations x their seeds.
Inside a pack every member has its own learning rate, weight decay, discount, n-step length, exploration schedule,
target period, Polyak tau, clip norm, reward scale, loss, Double-DQN flag, hidden widths, dueling head, batch size
and budget (see :class:`~dqlray.dqn.DQNLearner` and :class:`~dqlray.replay.ReplayBuffer`), and trains exactly as it
would alone with the same seeds (``tests/test_pack.py``). What the pack steps or stores once must agree:
:func:`pack_conflict` says why two configurations cannot share a pack, :func:`group_configs` groups a list.

:class:`PackRun` is the pack's training loop: the loop of :func:`dqlray.trainer.train` with one row per member and
per-member values; configurations leave the pack (their rows leave the batch) at their own budget or when stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from dqlray.config import SECTIONS, ExperimentConfig
from dqlray.data import OHLCV
from dqlray.dqn import GreedyPolicy, linear_epsilon
from dqlray.errors import ConfigError
from dqlray.evaluation import evaluate_policy
from dqlray.market import Market
from dqlray.parts import build_market, build_parts
from dqlray.trainer import _env_state, _load_env_state, steps_per_episode, validation_summary

MEMBER_FIELDS: dict[str, tuple[str, ...]] = {
    "agent": ("agent_type", "hidden", "learning_rate", "gamma", "batch_size", "target_update_freq", "tau", "n_step",
              "reward_scale", "loss", "max_grad_norm", "eps_start", "eps_end", "eps_decay_fraction", "weight_decay"),
    "train": ("experiment_name", "seed", "num_seeds", "episodes"),
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


def group_configs(configs: Sequence[ExperimentConfig], max_configs: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped into packs: one group per :func:`pack_key`, in order of first appearance, split
    into packs of at most ``max_configs``. Inside a group, configurations are ordered by shape (widths, batch size,
    head) before splitting, so that a split group pads little."""
    if max_configs is not None and max_configs < 1:
        raise ValueError(f"max_configs={max_configs} must be >= 1")
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(pack_key(c), []).append(i)
    packs = []
    for idx in groups.values():
        if max_configs is not None and len(idx) > max_configs:
            idx = sorted(idx, key=lambda i: (configs[i].agent.hidden, configs[i].agent.batch_size,
                                             configs[i].agent.dueling))
        step = max_configs or len(idx)
        packs += [idx[j:j + step] for j in range(0, len(idx), step)]
    return packs


@dataclass
class MemberResult:
    """One configuration of a pack: its per-episode metrics and, once it has left the pack, its learner state."""

    config: ExperimentConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    state: dict | None = None
    """:meth:`DQNLearner.member_state` of the configuration's seeds when it left the pack: loads into a learner of
    that configuration alone."""
    stopped_early: bool = False


class PackRun:
    """Train ``configs`` (each with its own seeds) as one pack, episode by episode.

    Member k's environment, replay sampling, exploration and initialisation derive from its seed alone, as in
    :func:`dqlray.trainer.train`; so a configuration's run inside a pack equals its run alone.
    """

    def __init__(self, configs: Sequence[ExperimentConfig], data: OHLCV | None = None, *,
                 market: Market | None = None) -> None:
        problem = pack_problem(configs)
        if problem is not None:
            raise ConfigError(f"pack: {problem}")
        self.configs = list(configs)
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
        self.episodes_done = np.zeros(len(self.configs))
        self.env_steps = 0
        self.episode = 0
        self.obs = self.venv.reset()
        self._t_start = time.perf_counter()

    @property
    def active(self) -> list[int]:
        """Indices of the configurations still in the pack."""
        return sorted(set(self.row_config.tolist()))

    def rows_of(self, ci: int) -> np.ndarray:
        """The learner rows of configuration ``ci`` (empty once it has left)."""
        return np.flatnonzero(self.row_config == ci)

    def run_episode(self) -> dict[int, dict[str, Any]]:
        """One episode of env steps for every member; returns each active configuration's metrics (the keys of
        :func:`dqlray.trainer.train`'s). Configurations that reach their budget leave the pack afterwards."""
        first = self.configs[0]
        ac = first.agent
        ln, buf, venv = self.learner, self.buffer, self.venv
        total = self.budget[self.row_config]
        ret_sum = np.zeros(ln.k)
        ret_n = np.zeros(ln.k)
        obs, env_steps = self.obs, self.env_steps
        t_ep = time.perf_counter()
        for _ in range(self.per_episode):
            actions = ln.act(obs, ln.epsilon(env_steps, total))
            t = venv.t.copy()
            pos = venv.pos
            step = venv.step(actions)
            buf.add(t, pos, actions, step.reward, step.terminated, step.truncated)
            obs = step.obs
            env_steps += 1
            if (step.terminated | step.truncated).any():
                fin = ~np.isnan(step.episode_return)
                ret_sum[fin] += step.episode_return[fin]
                ret_n += fin
            if env_steps >= ac.learning_starts and env_steps % ac.train_freq == 0:
                for _g in range(ac.gradient_steps):
                    ln.update(buf.sample(ln.batch_sizes))
        self.obs, self.env_steps = obs, env_steps
        self.episode += 1
        elapsed = time.perf_counter() - t_ep
        stats = ln.pop_stats()
        active = self.active
        due = [ci for ci in active if self.episode % first.train.eval_every == 0
               or self.episode >= self.configs[ci].train.episodes]
        if due:
            res = evaluate_policy(GreedyPolicy(ln), self.market, part="val", env=first.env, n_envs=ln.k,
                                  name="agent", periods=first.train.periods_per_year)
            for ci in due:
                self.last_val[ci] = validation_summary([res.metrics[r] for r in self.rows_of(ci)])
        out = {}
        for ci in active:
            rows = self.rows_of(ci)
            a = self.configs[ci].agent
            n = ret_n[rows].sum()
            self.episodes_done[ci] += n
            m: dict[str, Any] = {
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
            m.update(self.last_val[ci])
            m["time_total_s"] = time.perf_counter() - self._t_start
            self.results[ci].history.append(m)
            out[ci] = m
        self.stop([ci for ci in active if self.episode >= self.configs[ci].train.episodes], early=False)
        return out

    def stop(self, config_ids: Sequence[int], *, early: bool = True) -> dict[int, dict]:
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
            else:
                state = self.learner.remove_members(rows)
                self.buffer.remove_members(rows)
                keep = np.flatnonzero(self.row_config != ci)
                self.venv.keep_envs(keep)
                self.obs = self.venv.observe()
            self.row_config = self.row_config[self.row_config != ci]
            self.results[ci].state = state
            self.results[ci].stopped_early = early
            out[ci] = state
        return out

    def state_dict(self) -> dict:
        """Everything needed to continue the pack exactly (the replay buffer included)."""
        return {"learner": self.learner.state_dict(), "buffer": self.buffer.state_dict(),
                "env": _env_state(self.venv), "env_steps": self.env_steps, "episode": self.episode,
                "row_config": self.row_config.copy(), "episodes_done": self.episodes_done.copy(),
                "last_val": [dict(v) for v in self.last_val],
                "results": [{"history": list(r.history), "state": r.state, "stopped_early": r.stopped_early}
                            for r in self.results],
                "configs": [c.to_dict() for c in self.configs]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (a new :class:`PackRun` of the same configurations)."""
        if state["configs"] != [c.to_dict() for c in self.configs]:
            raise ConfigError("pack checkpoint was made with other configurations")
        left = [ci for ci in self.active if ci not in set(np.asarray(state["row_config"]).tolist())]
        self.stop(left)
        self.learner.load_state_dict(state["learner"])
        self.buffer.load_state_dict(state["buffer"])
        _load_env_state(self.venv, state["env"])
        self.obs = self.venv.observe()
        self.env_steps, self.episode = int(state["env_steps"]), int(state["episode"])
        self.episodes_done = np.array(state["episodes_done"], dtype=float)
        self.last_val = [dict(v) for v in state["last_val"]]
        for r, s in zip(self.results, state["results"], strict=True):
            r.history, r.state, r.stopped_early = list(s["history"]), s["state"], s["stopped_early"]


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
