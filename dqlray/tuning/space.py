"""Sweep files: base overrides, the search space, the guide's grid, and the sweep's own settings.

A sweep YAML has the single-run sections (``data``, ``env``, ``agent``, ``train``: overrides applied to every trial),
``search`` (``section.field: {loguniform|uniform|randint: [low, high]}`` or ``{choice: [...]}``), ``grid``
(``section.field: [values]``, run by ``--search grid``, each point once) and ``sweep`` (:class:`SweepConfig`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqlray.config import SECTIONS, ExperimentConfig, build_config, check_finite, field_index, flat_to_nested, load_yaml
from dqlray.errors import ConfigError

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """How Ray Tune runs the sweep."""

    search: str = "optuna"
    """``optuna`` (TPE, the default), ``random``, or ``grid`` (the file's grid, each point once)."""
    num_samples: int = 27
    """Trials sampled by optuna or random search (grid ignores it)."""
    scheduler: str = "asha"
    """``asha`` (early stopping) or ``none`` (every trial runs its full budget; for comparisons)."""
    metric: str = "val_sharpe"
    """What the search and ASHA maximise: the validation Sharpe, mean over each trial's seeds."""
    grace_period: int = 3
    """ASHA: episodes every trial runs before it can be stopped."""
    reduction_factor: int = 3
    """ASHA: keep the top 1/reduction_factor of trials at each rung."""
    cpus_per_trial: float = 1.0
    """CPUs reserved for one trial."""
    gpus_per_trial: float = 0.0
    """GPU share of one trial (e.g. 0.25: four trials per GPU); needs GPUs in the cluster."""
    max_concurrent: int | None = None
    """Trials at once; None follows the cluster's resources."""
    max_failures: int = 2
    """Times a crashed trial is retried from its last checkpoint."""
    seed: int = 0
    """Seed of the search algorithm."""
    pack: int | str = "auto"
    """Configurations trained together in one trial, as one batched network (issue 14): an integer >= 1 (1 is one
    configuration per trial), or ``auto``: as many as the benchmark found fastest on the device, fewer when the
    sweep is small enough to fill every trial slot with fewer (:func:`auto_pack_size`)."""
    tell_stopped: str = "complete"
    """How Optuna is told about a configuration stopped early by ASHA: ``complete`` with its last value (what Ray's
    OptunaSearch does), or ``pruned`` with its intermediate values (Optuna's TPE then ranks it below every
    configuration that completed, by the episode it reached). A diverged configuration is told as failed, or as
    pruned. Issue 12's benchmark chooses."""
    rung_window: int = 1
    """ASHA's rung value of a configuration: the mean of its last ``rung_window`` validation values of ``metric``
    (1: the last value, as Ray's ASHA compares)."""

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"sweep.{name}={getattr(self, name)!r} is not allowed: {allowed}")

        check_finite(self, "sweep")
        check(self.search in ("optuna", "random", "grid"), "search", "optuna, random or grid")
        check(self.num_samples >= 1, "num_samples", "an integer >= 1")
        check(self.scheduler in ("asha", "none"), "scheduler", "asha or none")
        check(self.metric in ("val_sharpe", "val_return"), "metric", "val_sharpe or val_return")
        check(self.grace_period >= 1, "grace_period", "an integer >= 1")
        check(self.reduction_factor >= 2, "reduction_factor", "an integer >= 2")
        check(self.cpus_per_trial > 0, "cpus_per_trial", "a number > 0")
        check(self.gpus_per_trial >= 0, "gpus_per_trial", "a number >= 0")
        check(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent", "null or an integer >= 1")
        check(self.max_failures >= 0, "max_failures", "an integer >= 0")
        check(self.pack == "auto" or (isinstance(self.pack, int) and not isinstance(self.pack, bool)
                                      and self.pack >= 1), "pack", "auto or an integer >= 1")
        check(self.tell_stopped in ("complete", "pruned"), "tell_stopped", "complete or pruned")
        check(self.rung_window >= 1, "rung_window", "an integer >= 1")


@dataclass(frozen=True)
class SweepFile:
    """A parsed sweep file."""

    base: ExperimentConfig
    search: dict[str, dict[str, Any]]
    grid: dict[str, list[Any]]
    sweep: SweepConfig
    source: str


def _check_key(key: str, source: str, section: str) -> None:
    index = field_index()
    if "." not in key or key.split(".", 1)[0] not in SECTIONS or key.split(".", 1)[1] not in index \
            or index[key.split(".", 1)[1]] != key.split(".", 1)[0]:
        raise ConfigError(f"{source}: {section} key {key!r} is not a config field (use section.field, e.g. "
                          "agent.learning_rate)")


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_sweep_file(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None,
                     sweep_overrides: dict[str, Any] | None = None) -> SweepFile:
    """Read a sweep YAML; ``overrides`` apply to the base config, ``sweep_overrides`` to the sweep settings."""
    src = str(path)
    raw = load_yaml(path)
    unknown = set(raw) - set(SECTIONS) - {"search", "grid", "sweep"}
    if unknown:
        raise ConfigError(f"{src}: unknown section(s) {', '.join(sorted(unknown))}; allowed: "
                          f"{', '.join([*SECTIONS, 'search', 'grid', 'sweep'])}")
    base = build_config({k: v for k, v in raw.items() if k in SECTIONS}, source=src)
    if overrides:
        base = build_config(overrides, base=base, source="command line")
    search = raw.get("search") or {}
    for key, spec in search.items():
        _check_key(key, src, "search")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS):
            raise ConfigError(f"{src}: search.{key} must be one of {{loguniform|uniform|randint: [low, high]}} or "
                              "{choice: [values]}")
        kind, args = next(iter(spec.items()))
        if kind != "choice" and not (isinstance(args, list) and len(args) == 2 and all(map(_finite_number, args))
                                     and args[0] < args[1]):
            raise ConfigError(f"{src}: search.{key}: {kind} needs [low, high], finite numbers with low < high, "
                              f"got {args!r}")
        if kind == "choice" and not (isinstance(args, list) and args):
            raise ConfigError(f"{src}: search.{key}: choice needs a non-empty list")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(f"{src}: search.{key}: loguniform needs low > 0, got {args[0]}")
    grid = raw.get("grid") or {}
    for key, values in grid.items():
        _check_key(key, src, "grid")
        if not (isinstance(values, list) and values):
            raise ConfigError(f"{src}: grid.{key} must be a non-empty list of values")
    sweep_raw = dict(raw.get("sweep") or {})
    sweep_raw.update({k: v for k, v in (sweep_overrides or {}).items() if v is not None})
    fields = {f.name for f in dataclasses.fields(SweepConfig)}
    bad = set(sweep_raw) - fields
    if bad:
        raise ConfigError(f"{src}: unknown key sweep.{sorted(bad)[0]}; allowed: {', '.join(sorted(fields))}")
    try:
        sweep = SweepConfig(**sweep_raw)
    except TypeError as e:
        raise ConfigError(f"{src}: sweep: {e}") from None
    if sweep.search == "grid" and not grid:
        raise ConfigError(f"{src}: --search grid needs a grid section")
    if sweep.search != "grid" and not search:
        raise ConfigError(f"{src}: --search {sweep.search} needs a search section")
    # every sampled value must make a valid config: check the bounds now, not in trial 14
    for key, spec in search.items():
        kind, args = next(iter(spec.items()))
        for v in (args if kind == "choice" else args):
            base.replace(flat_to_nested({key: v}), source=f"{src}: search.{key}")
    for key, values in grid.items():
        for v in values:
            base.replace(flat_to_nested({key: v}), source=f"{src}: grid.{key}")
    if sweep.scheduler == "asha":
        # ASHA decides a rung on the validation value measured there; a rung between evaluations would pass unjudged
        from dqlray.tuning.rungs import milestones

        every = base.train.eval_every
        off = [m for m in milestones(sweep.grace_period, sweep.reduction_factor, base.train.episodes) if m % every]
        if off:
            raise ConfigError(f"{src}: train.eval_every={every} does not evaluate at ASHA's rung episode(s) "
                              f"{', '.join(map(str, off))}: use an eval_every that divides sweep.grace_period="
                              f"{sweep.grace_period} (and its rungs)")
    return SweepFile(base=base, search=search, grid=grid, sweep=sweep, source=src)


def encode(value: Any) -> Any:
    """Choices Optuna cannot hold (lists such as hidden layer sizes) travel as JSON strings."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def decode(value: Any) -> Any:
    """Undo :func:`encode`."""
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value


CPU_PACK_CAP = 16
"""Most configurations per pack on a CPU. ``python -m bench.pack_throughput --scaling`` (one core, 2 seeds each;
``bench/README.md``, issue 14): 32-wide networks train at 10,400 agent-steps per CPU-second alone, 62,400 in packs
of 16 and 76,400 in packs of 32; 64-wide ones at 8,500, 24,300 and 25,800. Past 16 the gain flattens for all but the
smallest networks, while larger packs make fewer, longer trials: coarser scheduling, and fewer results for Optuna
between its asks."""
CUDA_PACK_CAP = 256
"""Most configurations per pack on a GPU: a small MLP needs hundreds of members to fill one (not measured yet: no
GPU was available to issue 14)."""


def auto_pack_size(n_configs: int, slots: int, gpu: bool) -> int:
    """``sweep.pack: auto``: enough configurations per pack that the sweep's packs fill the trial slots once,
    capped by what one pack should hold on the device (:data:`CPU_PACK_CAP`, :data:`CUDA_PACK_CAP`)."""
    cap = CUDA_PACK_CAP if gpu else CPU_PACK_CAP
    return max(1, min(cap, math.ceil(n_configs / max(slots, 1))))


def grid_points(sf: SweepFile) -> list[dict[str, Any]]:
    """Every point of the file's grid, each once (the last key varies fastest)."""
    keys = list(sf.grid)
    return [{k: encode(v) for k, v in zip(keys, values, strict=True)}
            for values in itertools.product(*(sf.grid[k] for k in keys))]


def expected_configs(sf: SweepFile) -> int:
    """How many configurations the sweep tries when complete."""
    if sf.sweep.search == "grid":
        return math.prod(len(v) for v in sf.grid.values())
    return sf.sweep.num_samples


def trial_config(base: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """A trial's full config: the sweep's base with the sampled ``section.field`` values applied."""
    return base.replace(flat_to_nested({k: decode(v) for k, v in params.items()}), source="trial")


def space_summary(sf: SweepFile) -> dict[str, str]:
    """One line per searched field, for logs and notifications."""
    if sf.sweep.search == "grid":
        return {k: "grid " + ", ".join(map(str, v)) for k, v in sf.grid.items()}
    return {k: f"{next(iter(s))} {next(iter(s.values()))}" for k, s in sf.search.items()}


# Settings that say where and how wide a sweep runs, not what it computes: a resumed sweep may take new values
# (a resubmitted SLURM job can get another allocation). Everything else is restored from the experiment folder.
PLACEMENT_KEYS = ("cpus_per_trial", "gpus_per_trial", "max_concurrent")


def sweep_file_dict(sf: SweepFile) -> dict[str, Any]:
    """Everything that defines a sweep's results, as plain data (stored in ``sweep_meta.json``)."""
    return {"sweep_file": sf.source, "base_config": sf.base.to_dict(), "search": sf.search, "grid": sf.grid,
            "sweep": dataclasses.asdict(sf.sweep)}


def sweep_file_from_dict(stored: dict[str, Any], source: str) -> SweepFile:
    """The :class:`SweepFile` a sweep was started with, from :func:`sweep_file_dict`'s output."""
    missing = [k for k in ("base_config", "search", "grid", "sweep") if k not in stored]
    if missing:
        raise ConfigError(f"{source}: cannot restore the sweep's settings (no {', '.join(missing)}); it was started "
                          "by an older dqlray: give the original flags again, or start a new --experiment-name")
    return SweepFile(base=build_config(stored["base_config"], source=source), search=dict(stored["search"]),
                     grid=dict(stored["grid"]), sweep=SweepConfig(**stored["sweep"]),
                     source=str(stored.get("sweep_file", source)))


def _first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if d is not None:
                return d
        return None
    return None if a == b else (path, a, b)


def sweep_difference(a: SweepFile, b: SweepFile) -> tuple[str, Any, Any] | None:
    """The first setting (``section.field``, value in ``b``, value in ``a``) that differs between two sweeps' results
    settings, placement settings (:data:`PLACEMENT_KEYS`) and the file name aside; None when they agree."""
    da, db = sweep_file_dict(a), sweep_file_dict(b)
    for d in (da, db):
        d.pop("sweep_file")
        for k in PLACEMENT_KEYS:
            d["sweep"].pop(k)
    diff = _first_difference(db, da)
    return diff


def resumed_sweep_file(stored: SweepFile, where: str, *, config_path: str | None = None,
                       overrides: dict[str, dict[str, Any]] | None = None,
                       sweep_overrides: dict[str, Any] | None = None) -> SweepFile:
    """The stored settings of a sweep being resumed, with any flag given again checked against them.

    A flag that repeats the stored value is fine; one that contradicts it raises :class:`ConfigError` naming both
    values. Placement settings (:data:`PLACEMENT_KEYS`) given again replace the stored ones.
    """
    def refuse(what: str, given: Any, was: Any) -> None:
        raise ConfigError(f"--resume: {what}={given!r} was given, but the sweep was started with {was!r} ({where}); "
                          "resume without that flag, or start a new --experiment-name")

    sweep_overrides = {k: v for k, v in (sweep_overrides or {}).items() if v is not None}
    if config_path is not None:
        diff = sweep_difference(stored, parse_sweep_file(config_path, overrides, sweep_overrides))
        if diff is not None:
            refuse(f"{config_path}: {diff[0]}", diff[1], diff[2])
    for sec, fields in (overrides or {}).items():
        for name, value in fields.items():
            key = f"{sec}.{name}"
            if key in stored.search or key in stored.grid:
                refuse(key, value, "a searched value")
            now = getattr(getattr(stored.base.replace({sec: {name: value}}, source="command line"), sec), name)
            was = getattr(getattr(stored.base, sec), name)
            if now != was:
                refuse(key, value, was)
    placement = {}
    for name, value in sweep_overrides.items():
        if name in PLACEMENT_KEYS:
            placement[name] = value
        elif getattr(stored.sweep, name) != value:
            refuse(f"sweep.{name}", value, getattr(stored.sweep, name))
    return dataclasses.replace(stored, sweep=dataclasses.replace(stored.sweep, **placement)) if placement else stored
