"""Reading what runs and sweeps left on disk: the single-run folder and Ray Tune's experiment folder.

Only files are read (no checkpoints, no Ray): a report can be made anywhere the folder is copied to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dqlray.data import DATA_DIR
from dqlray.errors import DqlrayError

RUN_MARKERS = ("eval.json", "metrics.csv", "meta.json")
SWEEP_MARKERS = ("summary.json", "trials.csv", "sweep_meta.json")


WALK_FORWARD_MARKER = "walk_forward.json"  # dqlray.walkforward.WF_FILE (not imported: reports read files only)


def folder_kind(path: str | Path) -> str:
    """``"walk_forward"`` for a walk-forward experiment, ``"sweep"`` for a sweep's experiment folder, ``"run"`` for
    a single run's folder; else a one-line error."""
    p = Path(path)
    if not p.is_dir():
        raise DqlrayError(f"{p}: no such folder")
    if (p / WALK_FORWARD_MARKER).exists():
        return "walk_forward"
    if any((p / m).exists() for m in SWEEP_MARKERS):
        return "sweep"
    if (p / "config.yaml").exists() and any((p / m).exists() for m in RUN_MARKERS):
        return "run"
    raise DqlrayError(f"{p}: neither a run folder (config.yaml with eval.json or metrics.csv) nor a sweep folder "
                      "(trials.csv, summary.json)")


def experiment_folders(results_dir: str | Path) -> tuple[list[Path], list[str]]:
    """The finished run and sweep folders directly under ``results_dir`` (the guide's ``--results_dir``), by name.

    Returns the folders with a test evaluation (``eval.json`` or ``summary.json``) and one warning for each run or
    sweep folder without one; a one-line error when ``results_dir`` is not a folder or holds no finished one.
    """
    root = Path(results_dir)
    if not root.exists():
        raise DqlrayError(f"{root}: no such folder")
    if not root.is_dir():
        raise DqlrayError(f"{root}: is a file, not a folder of results")
    found, skipped = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / "eval.json").exists() or (sub / "summary.json").exists():
            found.append(sub)
        elif any((sub / m).exists() for m in (*RUN_MARKERS, *SWEEP_MARKERS, WALK_FORWARD_MARKER)):
            skipped.append(f"{sub}: left out, not evaluated on its test split yet")
    if not found:
        raise DqlrayError(f"{root}: no finished run or sweep in it (a folder with eval.json or summary.json)")
    return found, skipped


def read_csv(path: Path, dates: bool = False, dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    """A CSV as saved (pandas 3 parses floats exactly: the numbers shown equal the numbers saved; tests check it)."""
    df = pd.read_csv(path, dtype=dtype)
    if dates and "date" in df.columns:
        df["date"] = pd.to_datetime(df["date"])
    return df


def _json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DqlrayError(f"{path}: not valid JSON ({e})") from None


@dataclass
class RunFolder:
    """A single run: resolved config, metadata, per-episode metrics, the test evaluation and the saved curves."""

    path: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    metrics: pd.DataFrame | None
    evaluation: dict[str, Any] | None
    equity: dict[str, pd.DataFrame] = field(default_factory=dict)  # part -> date, agent_seed*, agent_mean, baselines
    positions: dict[str, pd.DataFrame] = field(default_factory=dict)  # part -> date, agent_seed*, baselines

    @property
    def name(self) -> str:
        """The experiment name."""
        return str(self.meta.get("experiment") or self.config.get("train", {}).get("experiment_name") or self.path.name)


def load_run(path: str | Path) -> RunFolder:
    """Read a single run's folder."""
    p = Path(path)
    if not (p / "config.yaml").exists():
        raise DqlrayError(f"{p}: not a run folder (no config.yaml)")
    config = yaml.safe_load((p / "config.yaml").read_text()) or {}
    meta = _json(p / "meta.json") or {}
    metrics = read_csv(p / "metrics.csv") if (p / "metrics.csv").exists() else None
    run = RunFolder(path=p, config=config, meta=meta, metrics=metrics, evaluation=_json(p / "eval.json"))
    for part in ("test", "val"):
        if (p / f"equity_{part}.csv").exists():
            run.equity[part] = read_csv(p / f"equity_{part}.csv", dates=True)
        if (p / f"positions_{part}.csv").exists():
            run.positions[part] = read_csv(p / f"positions_{part}.csv", dates=True)
    return run


@dataclass
class SweepFolder:
    """A sweep: the configurations table, the summary with the winner's one test evaluation, and each
    configuration's curve."""

    path: Path
    trials: pd.DataFrame
    summary: dict[str, Any] | None
    meta: dict[str, Any]  # sweep_meta.json: space, sweep settings, base config
    curves: dict[str, pd.DataFrame]  # configuration id -> one row per episode
    equity: pd.DataFrame | None
    positions: pd.DataFrame | None

    @property
    def name(self) -> str:
        """The experiment name."""
        return str((self.summary or {}).get("experiment") or self.meta.get("experiment") or self.path.name)

    @property
    def metric(self) -> str:
        """What the sweep maximised on validation."""
        return str((self.summary or {}).get("metric") or self.meta.get("sweep", {}).get("metric") or "val_sharpe")

    @property
    def params(self) -> list[str]:
        """The searched hyperparameters (``section.field`` columns of the trials table)."""
        space = self.meta.get("space") or {}
        cols = [c for c in self.trials.columns if c in space]
        if not cols:  # an old or partial folder: every section.field column
            cols = [c for c in self.trials.columns if c.split(".", 1)[0] in ("data", "env", "agent", "train")]
        return cols

    @property
    def max_t(self) -> int | None:
        """The full budget of a configuration in episodes (ASHA's ``max_t``)."""
        v = self.meta.get("base_config", {}).get("train", {}).get("episodes")
        if v is None and "episodes" in self.trials:
            v = self.trials["episodes"].max()
        return int(v) if v is not None and v == v else None


def load_sweep(path: str | Path) -> SweepFolder:
    """Read a sweep's experiment folder (``trials.csv`` is written when the sweep completes).

    ``trials.csv`` has one row per configuration, keyed by ``config_id`` (issue 14; a sweep from before packed
    trials has one per trial, keyed by ``trial_id``, read as its configuration id). The curves come from each
    configuration's ``configs/<id>/metrics.csv``, or from Tune's ``trial_*/result.json`` for an older sweep.
    """
    p = Path(path)
    if not (p / "trials.csv").exists():
        raise DqlrayError(f"{p}: no trials.csv: the sweep has not completed (resume it with tune_main.py --resume)")
    # ids such as 0e123456 are not numbers
    trials = read_csv(p / "trials.csv", dtype={"trial_id": str, "config_id": str, "pack_id": str})
    if "config_id" not in trials.columns and "trial_id" in trials.columns:
        trials.insert(0, "config_id", trials["trial_id"])
    curves: dict[str, pd.DataFrame] = {}
    for f in sorted(p.glob("configs/*/metrics.csv")):
        df = read_csv(f)
        if len(df):
            curves[f.parent.name] = df
    for f in [] if curves else sorted(p.glob("trial_*/result.json")):
        rows = []
        for line in f.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
        if not rows:
            continue
        df = pd.DataFrame(rows)
        tid = str(df["trial_id"].iloc[-1]) if "trial_id" in df else f.parent.name.removeprefix("trial_")
        if "episodes" in df:
            # a trial retried from a checkpoint reports some episodes twice: the last report is the one that counts
            df = df.drop_duplicates("episodes", keep="last").sort_values("episodes").reset_index(drop=True)
        curves[tid] = df
    eq = read_csv(p / "equity_test.csv", dates=True) if (p / "equity_test.csv").exists() else None
    pos = read_csv(p / "positions_test.csv", dates=True) if (p / "positions_test.csv").exists() else None
    return SweepFolder(path=p, trials=trials, summary=_json(p / "summary.json"), meta=_json(p / "sweep_meta.json") or {},
                       curves=curves, equity=eq, positions=pos)


def resolve_data_file(data_file: str | None, folder: Path) -> Path | None:
    """Find a run's price file: as written, then relative to the run's folder and its parents; None if not found.

    ``data_file`` is stored as given on the command line, often relative to wherever the run was started.
    """
    if not data_file:
        return None
    p = Path(data_file).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    bases = [Path.cwd(), folder.resolve(), *folder.resolve().parents]
    candidates = [c for b in bases for c in (b / p, b / DATA_DIR / p)]  # the guide keeps datasets in data/
    return next((c for c in candidates if c.is_file()), None)


@dataclass
class WalkForwardFolder:
    """A walk-forward experiment: its plan, the stitched summary (once every fold is done) and curves."""

    path: Path
    plan: dict[str, Any]  # walk_forward.json
    summary: dict[str, Any] | None  # summary.json
    equity: pd.DataFrame | None  # the stitched test curves
    positions: pd.DataFrame | None

    @property
    def name(self) -> str:
        """The experiment name."""
        return str((self.summary or {}).get("experiment") or self.plan.get("experiment") or self.path.name)

    @property
    def tuned(self) -> bool:
        """Whether each fold is a sweep (else a single run)."""
        return self.plan.get("kind") == "sweep"


def load_walk_forward(path: str | Path) -> WalkForwardFolder:
    """Read a walk-forward experiment folder (:mod:`dqlray.walkforward`)."""
    p = Path(path)
    plan = _json(p / WALK_FORWARD_MARKER)
    if plan is None:
        raise DqlrayError(f"{p}: not a walk-forward experiment (no {WALK_FORWARD_MARKER})")
    eq = read_csv(p / "equity_test.csv", dates=True) if (p / "equity_test.csv").exists() else None
    pos = read_csv(p / "positions_test.csv", dates=True) if (p / "positions_test.csv").exists() else None
    return WalkForwardFolder(path=p, plan=plan, summary=_json(p / "summary.json"), equity=eq, positions=pos)


REPORT_DIR = "report"


def report_dir(folder: Path, out_dir: str | Path | None) -> Path:
    """Where a folder's report goes (``out_dir``, default ``<folder>/report``), created."""
    out = Path(out_dir) if out_dir is not None else folder / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    return out
