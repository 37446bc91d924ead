"""A configuration's record in a sweep's experiment folder: what stays of it once it leaves its pack (issue 14).

``<experiment>/configs/<config id>/`` holds

- ``member.json``: its parameters, pack, how it ended (reached its budget, stopped by ASHA, diverged), the episodes
  it reached, its validation metrics (those of the evaluation it is ranked by) and the value of every evaluation it
  had (each one a checkpoint the selection could have chosen, with ``train.select``);
- ``metrics.csv``: one row per episode;
- ``checkpoint/state.pt``: its networks when it left the pack (final, or at the stop), loadable by a learner of that
  configuration alone (:func:`dqlray.workflow.learner_from_checkpoint`); ``selected/state.pt`` too with
  ``train.select``: the networks of its best validation evaluation;
- ``val_returns.npy``: per-bar validation returns ``(T_val, K)`` of the evaluation it is ranked by (one column per
  seed: the verdict's PBO and deflated Sharpe need every configuration's, issue 11); with ``train.select`` also
  ``val_returns_last.npy``, those of its last evaluation; ``val_time.npy``, the bar each of those periods ends at
  (:func:`dqlray.tuning.validation.validation_matrix` aligns configurations on them);

``member.json`` is written last, so a record with it is complete. A pack retried after a crash writes the same
record again (same seed, same result).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqlray.config import ExperimentConfig
from dqlray.market import Market
from dqlray.pack import DIVERGED, STOPPED, MemberResult
from dqlray.runinfo import guarded_write, write_json
from dqlray.trainer import CHECKPOINT_FILE

CONFIGS_DIR = "configs"
RECORD_FILE = "member.json"
SUMMARY_KEYS = ("val_sharpe", "val_sharpe_std", "val_sharpe_min", "val_return", "val_return_std")


def member_dir(exp_dir: str | Path, config_id: str) -> Path:
    """``<experiment>/configs/<config id>``."""
    return Path(exp_dir) / CONFIGS_DIR / config_id


def rung_value(result: MemberResult, metric: str, window: int) -> float | None:
    """ASHA's value of a configuration: the mean of its last ``window`` validation values (None before any)."""
    values = [e[metric] for e in result.evaluations[-window:] if e.get(metric) is not None]
    return float(np.mean(values)) if values else None


def _save_atomic(path: Path, save: Any, what: str) -> None:
    with guarded_write(path.parent, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                save(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_member(exp_dir: str | Path, config_id: str, pack_id: str, params: dict[str, Any], result: MemberResult,
                 metric: str, node_ip: str | None = None, market: Market | None = None) -> dict[str, Any]:
    """Write the record of a configuration that has left its pack; returns ``member.json``'s content. ``market``
    (the pack's) dates its validation returns."""
    from dqlray.workflow import write_metrics_csv

    d = member_dir(exp_dir, config_id)
    cfg: ExperimentConfig = result.config
    d.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(d / "metrics.csv", result.history)
    state, val, returns, episode = result.kept()
    last = result.history[-1] if result.history else {}
    if result.status != DIVERGED and result.state is not None:
        body = {"learner": result.state, "config": cfg.to_dict(), "history": result.history,
                "episode": last.get("episodes")}
        _save_atomic(d / "checkpoint" / CHECKPOINT_FILE, lambda f: torch.save(body, f), f"{config_id}'s checkpoint")
        if result.selected is not None:
            chosen = {**body, "learner": result.selected["state"], "episode": result.selected["episodes"]}
            _save_atomic(d / "selected" / CHECKPOINT_FILE, lambda f: torch.save(chosen, f),
                         f"{config_id}'s checkpoint chosen by validation")
    if returns is not None:
        _save_atomic(d / "val_returns.npy", lambda f: np.save(f, returns), f"{config_id}'s validation returns")
        if market is not None:
            a, b = market.part("val")
            bars = np.asarray(market.data.time[a + 1:b], dtype="datetime64[ns]").astype(np.int64)
            _save_atomic(d / "val_time.npy", lambda f: np.save(f, bars), f"{config_id}'s validation bars")
    if result.selected is not None and result.val_returns is not None:
        _save_atomic(d / "val_returns_last.npy", lambda f: np.save(f, result.val_returns),
                     f"{config_id}'s last validation returns")
    record: dict[str, Any] = {
        "config_id": config_id,
        "pack_id": pack_id,
        "params": params,
        "outcome": result.status,
        "episodes": last.get("episodes"),
        "budget": cfg.train.episodes,
        "env_steps": last.get("env_steps"),
        "stopped_by_asha": result.status == STOPPED,
        "diverged": result.status == DIVERGED,
        **{k: val.get(k) for k in SUMMARY_KEYS},
        "episode_return": last.get("episode_return"),
        "loss": last.get("loss"),
        "time_total_s": last.get("time_total_s"),
        "node_ip": node_ip,
        "select": cfg.train.select,
        "selected_episode": episode if result.selected is not None else None,
        "evaluations": [e.get(metric) for e in result.evaluations],
        "checkpoint": ("selected" if result.selected is not None else "checkpoint")
        if result.status != DIVERGED and result.state is not None else None,
    }
    write_json(d / RECORD_FILE, record)
    return record


def read_members(exp_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every complete record under ``<experiment>/configs``, by configuration id."""
    out = {}
    for f in sorted((Path(exp_dir) / CONFIGS_DIR).glob(f"*/{RECORD_FILE}")):
        try:
            out[f.parent.name] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def member_checkpoint(exp_dir: str | Path, record: dict[str, Any]) -> Path | None:
    """The checkpoint a configuration is evaluated with: chosen by validation, or its last (None if diverged)."""
    which = record.get("checkpoint")
    if which is None:
        return None
    p = member_dir(exp_dir, record["config_id"]) / which
    return p if (p / CHECKPOINT_FILE).exists() else None


def members_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each configuration's part of a pack's result, whether Tune passes it nested or flattened
    (``members/<id>/<key>``, as searchers receive results)."""
    if isinstance(result.get("members"), dict):
        return result["members"]
    out: dict[str, dict[str, Any]] = {}
    for key, v in result.items():
        if isinstance(key, str) and key.startswith("members/"):
            _, cid, name = key.split("/", 2)
            out.setdefault(cid, {})[name] = v
    return out
