"""Configuration: frozen, keyword-only dataclasses, the one home of every default.

Precedence: these defaults < a YAML file (``configs/*.yaml``, overrides only) < a search space sample < command-line
flags. Unknown keys, wrong types and values out of range raise :class:`~dqlray.errors.ConfigError` naming the file,
the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dqlray.errors import ConfigError

AGENT_ALIASES = {"dqn": "dqn", "dql": "dqn", "double_dueling": "double_dueling", "custom": "double_dueling"}


def _check(cond: bool, section: str, name: str, value: object, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}={value!r} is not allowed: {allowed}")


def check_finite(obj: Any, section: str) -> None:
    """Refuse NaN and infinity in any float field of a config dataclass (issue 13 item 7).

    Range checks alone let them through (``inf > 0`` holds; every comparison with NaN is false, so NaN passes a
    check written as a rejection), and a run with ``learning_rate=inf`` trains on NaN losses. ``1e400`` is read as
    infinity by Python and YAML alike, so it is refused here too.
    """
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{section}.{f.name}={v!r} is not allowed: a finite number")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which prices, and how they are split and windowed."""

    data_file: str = "data/test_small.csv"
    """CSV or Parquet OHLCV file."""
    train: float | str = 0.6
    """Fraction of bars for training, or the ISO date at which validation begins."""
    val: float | str = 0.2
    """Fraction of bars for validation, or the ISO date at which the test part begins."""
    window: int = 8
    """Bars of features in one observation (each feature already summarises up to 50 bars)."""
    walk_forward: int = 0
    """Walk-forward folds (issue 11); 0 is the one chronological split above. With N folds, fold 0 trains on the
    first ``train`` of the bars (a fraction of those after the feature warm-up, or the date validation begins), and
    the bars after it, less two embargoes, make N + 1 equal blocks: every fold validates on one block and tests on
    the next block after an embargo, its training window expanding to the embargo before its validation block; the
    N test blocks follow each other to the last bar. ``val`` is not used."""
    fold: int | None = None
    """The walk-forward fold (0 .. walk_forward - 1) a run trains, validates and tests on; the walk-forward driver
    (``--walk-forward N``, ``--fold I``) sets it for each fold's run."""
    embargo: int | None = None
    """Walk-forward: bars left out between training and validation and between validation and test; None is the
    features' look-back (the 50-bar warm-up plus ``window`` - 1 bars)."""

    def __post_init__(self) -> None:
        check_finite(self, "data")
        _check(self.window >= 1, "data", "window", self.window, "an integer >= 1")
        _check(self.walk_forward >= 0, "data", "walk_forward", self.walk_forward, "an integer >= 0 (0: one split)")
        _check(self.fold is None or 0 <= self.fold < self.walk_forward, "data", "fold", self.fold,
               f"null or a fold 0 .. {self.walk_forward - 1} of data.walk_forward={self.walk_forward}"
               if self.walk_forward else "null without data.walk_forward")
        _check(self.embargo is None or self.embargo >= 0, "data", "embargo", self.embargo, "null or an integer >= 0")
        if isinstance(self.train, float) and isinstance(self.val, float):
            _check(0 < self.train < 1, "data", "train", self.train, "a fraction in (0, 1) or an ISO date")
            _check(0 < self.val < 1, "data", "val", self.val, "a fraction in (0, 1) or an ISO date")
            _check(self.train + self.val < 1, "data", "val", self.val, f"train + val < 1 (train is {self.train})")


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """Market frictions and episode shape of the trading environment."""

    positions: str = "long_flat"
    """Target positions: ``long_flat`` (flat, long) or ``long_short`` (short, flat, long)."""
    fee_bps: float = 1.0
    """Proportional fee per unit of traded notional, in basis points."""
    slippage_bps: float = 1.0
    """Slippage per unit of traded notional, in basis points."""
    episode_length: int | None = None
    """Training episode length in bars; None runs each episode to the end of the training part."""
    random_start: bool = True
    """Random start offsets for training episodes."""
    ruin_fraction: float = 0.1
    """A training episode terminates when the value falls to this fraction of its start."""

    def __post_init__(self) -> None:
        check_finite(self, "env")
        _check(self.positions in ("long_flat", "long_short"), "env", "positions", self.positions,
               "long_flat or long_short")
        _check(self.fee_bps >= 0, "env", "fee_bps", self.fee_bps, "a number >= 0")
        _check(self.slippage_bps >= 0, "env", "slippage_bps", self.slippage_bps, "a number >= 0")
        # A trade costs (fee + slippage) times the traded notional, which is up to 2x the portfolio when going from
        # short to long: at 100% of the portfolio or more, env.apply_positions floors the value at 1e-12 and every
        # reward after it is meaningless, so such costs are refused rather than trained on.
        most = 10_000 / (2 if self.positions == "long_short" else 1)
        _check(self.fee_bps + self.slippage_bps < most, "env", "fee_bps", self.fee_bps,
               f"fee_bps + slippage_bps < {most:g} with positions={self.positions} (a trade would cost the whole "
               f"portfolio; slippage_bps is {self.slippage_bps:g})")
        _check(self.episode_length is None or self.episode_length >= 1, "env", "episode_length",
               self.episode_length, "null or an integer >= 1")
        _check(0 <= self.ruin_fraction < 1, "env", "ruin_fraction", self.ruin_fraction, "a fraction in [0, 1)")

    @property
    def cost_rate(self) -> float:
        """Cost of a trade per unit of traded notional: ``(fee_bps + slippage_bps) * 1e-4`` (as the env charges)."""
        return (self.fee_bps + self.slippage_bps) * 1e-4


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The DQN agent and its update."""

    agent_type: str = "dqn"
    """``dqn`` (alias ``dql``): DQN with a target network; ``double_dueling`` (alias ``custom``): Double DQN with a
    dueling head."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer widths."""
    learning_rate: float = 5e-4
    """Adam learning rate."""
    gamma: float = 0.95
    """Discount factor."""
    batch_size: int = 64
    """Transitions per gradient step, per seed."""
    buffer_size: int = 50_000
    """Replay capacity per seed, in transitions."""
    learning_starts: int = 1_000
    """Env steps per seed before the first gradient step."""
    train_freq: int = 4
    """Env steps per seed between gradient steps."""
    gradient_steps: int = 1
    """Gradient steps each time training happens."""
    target_update_freq: int = 100
    """Gradient steps between target network updates."""
    tau: float = 1.0
    """Target update weight: 1.0 copies (hard update), below 1 is Polyak averaging."""
    n_step: int = 1
    """Steps of the n-step return."""
    reward_scale: float = 100.0
    """Rewards (log returns) are multiplied by this for learning only, so that Q-values are in percent rather than
    in units of 1e-3; the reported returns and metrics are unscaled."""
    loss: str = "huber"
    """``huber`` (smooth L1) or ``mse``."""
    max_grad_norm: float | None = 10.0
    """Clip each seed's gradient norm to this; None disables clipping."""
    eps_start: float = 1.0
    """Initial exploration rate."""
    eps_end: float = 0.05
    """Final exploration rate."""
    eps_decay_fraction: float = 0.3
    """Fraction of the training budget over which epsilon decays linearly."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW, Loshchilov and Hutter 2019): every step multiplies the parameters by
    ``1 - learning_rate * weight_decay`` before the Adam step; 0 is plain Adam. A regulariser for small, noisy
    training sets (issue 12)."""

    def __post_init__(self) -> None:
        check_finite(self, "agent")
        _check(self.agent_type in AGENT_ALIASES, "agent", "agent_type", self.agent_type,
               "one of " + ", ".join(AGENT_ALIASES))
        object.__setattr__(self, "agent_type", AGENT_ALIASES[self.agent_type])
        object.__setattr__(self, "hidden", tuple(self.hidden))
        _check(len(self.hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in self.hidden), "agent", "hidden",
               self.hidden, "a list of positive integers")
        _check(self.learning_rate > 0, "agent", "learning_rate", self.learning_rate, "a number > 0")
        _check(0 <= self.gamma <= 1, "agent", "gamma", self.gamma, "a number in [0, 1]")
        for name in ("batch_size", "buffer_size", "train_freq", "gradient_steps", "target_update_freq", "n_step"):
            v = getattr(self, name)
            _check(v >= 1, "agent", name, v, "an integer >= 1")
        _check(self.learning_starts >= self.n_step, "agent", "learning_starts", self.learning_starts,
               f"an integer >= n_step ({self.n_step}), so every seed's buffer holds transitions before learning")
        _check(self.reward_scale > 0, "agent", "reward_scale", self.reward_scale, "a number > 0")
        _check(0 < self.tau <= 1, "agent", "tau", self.tau, "a number in (0, 1]")
        _check(self.weight_decay >= 0 and self.learning_rate * self.weight_decay < 1, "agent", "weight_decay",
               self.weight_decay, f"a number >= 0 with learning_rate * weight_decay < 1 (learning_rate is "
               f"{self.learning_rate})")
        _check(self.loss in ("huber", "mse"), "agent", "loss", self.loss, "huber or mse")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "agent", "max_grad_norm", self.max_grad_norm,
               "null or a number > 0")
        for name in ("eps_start", "eps_end"):
            v = getattr(self, name)
            _check(0 <= v <= 1, "agent", name, v, "a number in [0, 1]")
        _check(0 < self.eps_decay_fraction <= 1, "agent", "eps_decay_fraction", self.eps_decay_fraction,
               "a number in (0, 1]")
        _check(self.batch_size <= self.buffer_size, "agent", "batch_size", self.batch_size,
               f"<= buffer_size ({self.buffer_size})")

    @property
    def double(self) -> bool:
        """Double DQN targets."""
        return self.agent_type == "double_dueling"

    @property
    def dueling(self) -> bool:
        """Dueling value/advantage head."""
        return self.agent_type == "double_dueling"


SELECT_CHOICES = ("last", "best_val_sharpe", "best_val_return")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Budget, seeds, reporting and checkpoints of one training run."""

    experiment_name: str = "experiment"
    """Name of the run folder under ``results_dir``."""
    results_dir: str = "results"
    """Where run folders are written."""
    episodes: int = 20
    """Training budget in episodes; an episode is one pass's worth of env steps over the training part (or
    ``env.episode_length`` steps) per seed. Metrics are reported once per episode."""
    seed: int = 0
    """First seed; seeds are ``seed .. seed + num_seeds - 1``."""
    num_seeds: int = 4
    """Seeds trained in lockstep as one batched network."""
    eval_every: int = 1
    """Episodes between validation evaluations."""
    ensemble: bool = False
    """Score the seeds as one policy, the action with the highest Q-value averaged over the seeds
    (:class:`dqlray.dqn.EnsemblePolicy`), on validation (what a sweep ranks by) and on the test part, instead of
    each seed's own greedy policy. The result is one policy, so it has no spread over seeds (issue 12)."""
    checkpoint_every: int = 100
    """Episodes between checkpoints (the last episode is always checkpointed)."""
    keep_checkpoints: int = 3
    """Checkpoints kept (older ones are deleted)."""
    checkpoint_buffer: bool = True
    """Store the replay buffer in checkpoints, so that a resumed run equals an uninterrupted one."""
    device: str = "cpu"
    """``cpu``, ``cuda``, or ``auto`` (CUDA when available)."""
    torch_threads: int = 1
    """Torch intra-op threads (1 is fastest for these small networks, and lets trials share a node)."""
    periods_per_year: int = 252
    """Bars per year for annualised metrics."""
    select: str = "last"
    """Which parameters the run keeps for its test evaluation: ``last`` (those at the end of the budget), or
    ``best_val_sharpe`` / ``best_val_return`` (those of the validation evaluation with the best mean over seeds of
    that metric: a checkpoint chosen by validation, issue 12). A chosen checkpoint is one of the run's evaluations,
    so a sweep counts every evaluation among the trials the multiple-testing haircut deflates by."""

    def __post_init__(self) -> None:
        check_finite(self, "train")
        for name in ("episodes", "num_seeds", "eval_every", "checkpoint_every", "keep_checkpoints", "torch_threads",
                     "periods_per_year"):
            v = getattr(self, name)
            _check(v >= 1, "train", name, v, "an integer >= 1")
        _check(self.device in ("cpu", "cuda", "auto"), "train", "device", self.device, "cpu, cuda or auto")
        _check(self.select in SELECT_CHOICES, "train", "select", self.select, ", ".join(SELECT_CHOICES))
        _check(bool(self.experiment_name) and "/" not in self.experiment_name, "train", "experiment_name",
               self.experiment_name, "a non-empty name without '/'")

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds trained in lockstep."""
        return tuple(range(self.seed, self.seed + self.num_seeds))


@dataclass(frozen=True, kw_only=True)
class VerdictConfig:
    """How the verdict against the benchmark is computed (issue 11; :mod:`dqlray.verdict`): the ``verdict:`` section."""

    benchmark: str = "buy_and_hold"
    """The baseline skill is measured against (a name from ``dqlray.baselines.BASELINES``)."""
    level: float = 0.05
    """Significance level: the agent beats the benchmark when both one-sided p-values are at or below it."""
    ci_level: float = 0.95
    """Confidence level of the bootstrap interval of the information ratio."""
    n_boot: int = 2000
    """Stationary bootstrap replications (check 1: against the benchmark)."""
    n_null: int = 2000
    """Null policies made by shuffling the agent's own position stretches (check 2: against luck)."""
    block_length: float | None = None
    """Mean block length of the stationary bootstrap in bars; None picks it from the active returns
    (Politis and White 2004, :func:`dqlray.verdict.optimal_block_length`, as ``arch`` computes it)."""
    pbo_blocks: int = 16
    """Blocks S of combinatorially symmetric cross-validation (even; fewer when the validation part is short)."""
    pbo_max_splits: int = 20_000
    """Most in-sample/out-of-sample splits used for PBO; a seeded random subset beyond it."""
    resample_seed: int = 0
    """Seed of the bootstrap, the null shuffles and any PBO subset: same seed, same verdict (named apart from
    ``train.seed``: field names are unique across sections)."""

    def __post_init__(self) -> None:
        from dqlray.baselines import BASELINES  # late: baselines import the env, which never imports config

        check_finite(self, "verdict")
        _check(self.benchmark in BASELINES, "verdict", "benchmark", self.benchmark, "one of " + ", ".join(BASELINES))
        _check(0 < self.level < 0.5, "verdict", "level", self.level, "a number in (0, 0.5)")
        _check(0 < self.ci_level < 1, "verdict", "ci_level", self.ci_level, "a number in (0, 1)")
        for name in ("n_boot", "n_null"):
            v = getattr(self, name)
            _check(v >= 99, "verdict", name, v, "an integer >= 99 (a p-value needs resolution below 1%)")
        _check(self.block_length is None or self.block_length >= 1, "verdict", "block_length", self.block_length,
               "null or a number >= 1")
        _check(self.pbo_blocks >= 2 and self.pbo_blocks % 2 == 0, "verdict", "pbo_blocks", self.pbo_blocks,
               "an even integer >= 2")
        _check(self.pbo_max_splits >= 1, "verdict", "pbo_max_splits", self.pbo_max_splits, "an integer >= 1")
        _check(self.resample_seed >= 0, "verdict", "resample_seed", self.resample_seed, "an integer >= 0")


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (YAML-ready; tuples become lists)."""
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            sec = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items()}
        return out

    def replace(self, overrides: dict[str, dict[str, Any]], *, source: str = "overrides") -> ExperimentConfig:
        """A copy with ``{section: {field: value}}`` applied, every key and value checked."""
        return build_config(overrides, base=self, source=source)


SWEEP_KEYS = ("search", "grid", "sweep")
SECTIONS: dict[str, type] = {"data": DataConfig, "env": EnvConfig, "agent": AgentConfig, "train": TrainConfig,
                             "verdict": VerdictConfig}


def field_index() -> dict[str, str]:
    """Map of every field name to its section (field names are unique across sections)."""
    out = {}
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f.name] = sec
    return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against a field's annotation, converting ints to floats and lists to tuples."""
    hints = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    if value is None:
        if type(None) in hints:
            return None
        raise ConfigError(f"{where}: null is not allowed")
    for h in hints:
        if h is bool and isinstance(value, bool):
            return value
        if h is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if h is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if h is str and isinstance(value, str):
            return value
        if typing.get_origin(h) is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
    names = " or ".join("null" if h is type(None) else getattr(h, "__name__", str(h)) for h in hints)
    raise ConfigError(f"{where}: {value!r} is not a {names}")


def build_config(overrides: dict[str, Any] | None, *, base: ExperimentConfig | None = None,
                 source: str = "config") -> ExperimentConfig:
    """Apply nested ``{section: {field: value}}`` overrides to ``base`` (defaults if None), checking every key."""
    base = base or ExperimentConfig()
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(overrides).__name__}")
    sections = {}
    for sec, cls in SECTIONS.items():
        current = getattr(base, sec)
        given = overrides.get(sec) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping of fields")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in given.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {sec}.{key}; allowed: {', '.join(fields)}")
            kwargs[key] = _coerce(value, hints[key], f"{source}: {sec}.{key}")
        try:
            sections[sec] = dataclasses.replace(current, **kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    for sec in overrides:
        if sec not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {sec!r}; allowed: {', '.join(SECTIONS)}")
    return ExperimentConfig(**sections)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors naming the file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', 'parse error')})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Defaults, then the YAML file at ``path`` (sections ``data/env/agent/train/verdict``), then ``overrides``."""
    cfg = ExperimentConfig()
    if path is not None:
        raw = load_yaml(path)
        for key in SWEEP_KEYS:  # a sweep file carries its search space and sweep settings; single runs ignore them
            raw.pop(key, None)
        cfg = build_config(raw, base=cfg, source=str(path))
    if overrides:
        cfg = build_config(overrides, base=cfg, source="command line")
    return cfg


def flat_to_nested(flat: dict[str, Any], *, source: str = "overrides") -> dict[str, dict[str, Any]]:
    """``{"learning_rate": 1e-3}`` or ``{"agent.learning_rate": 1e-3}`` to ``{"agent": {"learning_rate": 1e-3}}``."""
    index = field_index()
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if "." in key:
            sec, name = key.split(".", 1)
        else:
            if key not in index:
                raise ConfigError(f"{source}: unknown key {key!r}")
            sec, name = index[key], key
        out.setdefault(sec, {})[name] = value
    return out
