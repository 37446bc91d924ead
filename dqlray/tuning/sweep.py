"""The sweep driver behind ``tune_main.py``: Ray Tune with ASHA and Optuna, resumable, honest about the winner.

Each Tune trial trains a pack of configurations (issue 14; ``--pack 1``: one per trial): :class:`PackSearcher`
forms the packs and tells Optuna each configuration's result, the sweep's rung table (:mod:`dqlray.tuning.rungs`)
stops configurations early, and every table downstream speaks in configurations. Configurations are scored on the
validation split only. When the sweep is complete, the best configuration that reached its full budget is evaluated
once, from its own checkpoint, on the untouched test split (every seed, next to every baseline) and gets its verdict
against the benchmark (:mod:`dqlray.verdict`; the search check uses every configuration's validation returns and
counts every configuration and chosen checkpoint tried); a completed experiment is never re-evaluated on test.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import yaml

from dqlray.cli import EXIT_RESUMABLE
from dqlray.data import OHLCV, data_hash, load_ohlcv
from dqlray.errors import DqlrayError
from dqlray.formatting import fmt
from dqlray.lock import hold_folder
from dqlray.metrics import deflated_sharpe, finite_or_none
from dqlray.notify import SweepNotifier, get_notifier
from dqlray.parts import build_market
from dqlray.report import report_after_run
from dqlray.runinfo import atomic_write_text, git_commit, package_versions, write_json
from dqlray.trainer import checkpoint_bytes
from dqlray.tuning.local_ray import LocalRay, local_ray_environment
from dqlray.tuning.members import member_checkpoint, members_of, read_members
from dqlray.tuning.rungs import RUNGS_FILE, milestones, start_rung_server
from dqlray.tuning.space import (
    PLACEMENT_KEYS,
    SweepFile,
    auto_pack_size,
    expected_configs,
    resumed_sweep_file,
    space_summary,
    sweep_file_dict,
    sweep_file_from_dict,
    trial_config,
)
from dqlray.tuning.trainable import PackSettings, pack_trainable
from dqlray.tuning.validation import search_record
from dqlray.verdict import message_parts, verdict_lines, zero_null_dsr_text
from dqlray.workflow import (
    evaluate_all,
    format_metrics_table,
    learner_from_checkpoint,
    record_test_verdict,
    save_curves,
)

TIME_ATTR = "episodes"  # the same in every trial: one episode = the same number of env steps per seed


@dataclass(frozen=True)
class SweepRun:
    """Where and how a sweep runs (command-line level settings, not hyperparameters)."""

    sweep_file: SweepFile
    experiment_name: str
    storage_path: str
    address: str | None = None
    resume: bool = False
    dashboard: bool = True
    title: str | None = None
    """The name in notifications (default ``experiment_name``; a walk-forward fold: ``<experiment>/fold_<i>``)."""
    resume_command: str | None = None
    """The command printed to resume a stopped sweep (default: ``tune_main.py --resume`` of this experiment)."""


def experiment_dir(run: SweepRun) -> Path:
    """``<storage_path>/<experiment_name>``: Tune's experiment folder, where the sweep's tables go too."""
    return Path(run.storage_path).resolve() / run.experiment_name


META_FILE = "sweep_meta.json"


def stored_sweep_file(exp_dir: Path, *, config_path: str | None = None,
                      overrides: dict[str, dict[str, Any]] | None = None,
                      sweep_overrides: dict[str, Any] | None = None) -> SweepFile:
    """The settings an experiment was started with (from its ``sweep_meta.json``), flags given again checked."""
    meta_path = exp_dir / META_FILE
    if not meta_path.exists():
        raise DqlrayError(f"{exp_dir}: no sweep to resume (no {META_FILE}); check --experiment-name and "
                          "--storage-path")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DqlrayError(f"{meta_path}: unreadable ({e})") from None
    stored = sweep_file_from_dict(meta, str(meta_path))
    return resumed_sweep_file(stored, str(meta_path), config_path=config_path, overrides=overrides,
                              sweep_overrides=sweep_overrides)


class ClusterResources(NamedTuple):
    """What the Ray cluster offers: in all, and on its largest node (the most one trial can get)."""

    total: dict[str, float]
    largest_node: dict[str, float]
    nodes: int


def ray_address(run: SweepRun) -> str | None:
    """The cluster to join (``--address`` or ``RAY_ADDRESS``), or None for a local Ray started by the driver."""
    return run.address or os.environ.get("RAY_ADDRESS") or None


def _init_ray(run: SweepRun, out: Any, local: LocalRay | None) -> ClusterResources:
    import ray

    address = ray_address(run)
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "configure_logging": False}
    if address is None:
        kwargs["include_dashboard"] = run.dashboard
        if local is not None:
            kwargs["_temp_dir"] = str(local.ray_temp_dir)  # its own, so a crash's leftovers can be told apart
        if not run.dashboard:
            kwargs["num_cpus"] = os.cpu_count()
    ctx = ray.init(**kwargs)
    url = getattr(ctx, "dashboard_url", None)
    if url:
        where = f"in {local.token}" if local is not None and local.token else "in $RAY_AUTH_TOKEN_PATH"
        out(f"Ray dashboard: http://{url}  (token-protected: the token is {where}; never share it)")
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = {k: max((n.get("Resources", {}).get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
    out(f"Ray cluster: {len(nodes)} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
    return ClusterResources(res, largest, len(nodes))


def _check_trial_fits(sw: Any, cluster: ClusterResources) -> None:
    """Refuse a trial no node can host: Ray would keep it PENDING forever (issue 13)."""
    if sw.gpus_per_trial > 0 and cluster.total.get("GPU", 0) <= 0:
        raise DqlrayError(f"--gpus-per-trial {sw.gpus_per_trial} but the Ray cluster has no GPUs")
    for flag, want, key in (("--cpus-per-trial", sw.cpus_per_trial, "CPU"), ("--gpus-per-trial", sw.gpus_per_trial,
                                                                               "GPU")):
        most = cluster.largest_node.get(key, 0.0)
        if want > most:
            where = (f"the Ray cluster has {most:g} {key}s" if cluster.nodes == 1 else
                     f"the largest of the Ray cluster's {cluster.nodes} nodes has {most:g} {key}s "
                     f"({cluster.total.get(key, 0):g} in all; a trial runs on one node)")
            raise DqlrayError(f"{flag} {want:g} but {where}; the trials would wait forever")


def trial_slots(sw: Any, cluster_total: dict[str, float]) -> int:
    """Trials (packs) that run at once: ``max_concurrent``, else what the cluster's CPUs (and GPUs) hold."""
    auto = max(1, int(cluster_total.get("CPU", 1) // sw.cpus_per_trial))
    if sw.gpus_per_trial > 0:
        auto = min(auto, max(1, int(cluster_total.get("GPU", 0) / sw.gpus_per_trial)))
    return sw.max_concurrent or auto


def pack_size(sf: SweepFile, slots: int) -> int:
    """Configurations per pack: ``sweep.pack``, or for ``auto`` :func:`auto_pack_size` on this sweep's device."""
    sw = sf.sweep
    if sw.pack != "auto":
        return int(sw.pack)
    return auto_pack_size(expected_configs(sf), slots, gpu=sw.gpus_per_trial > 0)


@contextmanager
def tune_settings(slots: int) -> Iterator[None]:
    """Ray Tune's settings (environment variables, read when ``fit`` starts) for one sweep's ``fit``, restored after
    it; a value the user set is kept.

    - ``TUNE_MAX_PENDING_TRIALS_PG`` = the trial slots: for a custom searcher Tune keeps one trial pending, so the
      second pack's worker would only start once the first one's had, a slot idle for a worker's start-up (3 to 4 s)
      at the start of every sweep. :class:`PackSearcher` limits concurrency itself.
    - ``TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S`` = 0: a pack checkpoints when configurations leave
      it, so Tune's experiment snapshots come often and it warns that they "may become a bottleneck", three times in
      a default sweep. Measured (cProfile of the driver): 10 snapshots, 0.31 s in all. Its warning for a slow
      snapshot (30 s) stays.
    """
    wanted = {"TUNE_MAX_PENDING_TRIALS_PG": str(slots), "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    ours = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in ours})
    try:
        yield
    finally:
        for k in ours:
            os.environ.pop(k, None)


def _build_tuner(run: SweepRun, data: OHLCV, cluster: ClusterResources, callbacks: list,
                 trainable_fn: Callable[..., None], out: Any = print) -> tuple[Any, Any, int, Any]:
    """The Tuner, its trainable, the pack size, and the rung actor (held by the caller for the sweep: a named
    actor without a handle is stopped)."""
    from ray import tune

    from dqlray.tuning.search import PackSearcher

    sf = run.sweep_file
    sw = sf.sweep
    _check_trial_fits(sw, cluster)
    exp = experiment_dir(run)
    res = {"cpu": sw.cpus_per_trial, "gpu": sw.gpus_per_trial}
    base = sf.base
    if sw.gpus_per_trial > 0:
        base = base.replace({"train": {"device": "cuda"}})
    slots = trial_slots(sw, cluster.total)
    m = pack_size(sf, slots)
    n = expected_configs(sf)
    settings = PackSettings(exp_dir=str(exp), metric=sw.metric)
    actor = None
    if sw.scheduler == "asha":
        rungs = milestones(sw.grace_period, sw.reduction_factor, base.train.episodes)
        name = f"dqlray-rungs-{uuid.uuid4().hex[:12]}"
        actor = start_rung_server(name, exp / RUNGS_FILE, sw.grace_period, sw.reduction_factor, base.train.episodes)
        settings = dataclasses.replace(settings, rungs=tuple(rungs), rungs_actor=name, rung_window=sw.rung_window)
    trainable = tune.with_resources(tune.with_parameters(trainable_fn, data=data, base=base, settings=settings),
                                    res)
    out(f"{n} configurations in packs of up to {m} (--pack {sw.pack}), {slots} pack(s) at once")
    tune_config = tune.TuneConfig(search_alg=PackSearcher(sf, m, slots), num_samples=n, reuse_actors=True,
                                  trial_dirname_creator=lambda t: f"trial_{t.trial_id}")
    run_config = tune.RunConfig(
        name=run.experiment_name, storage_path=str(Path(run.storage_path).resolve()),
        failure_config=tune.FailureConfig(max_failures=sw.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks, verbose=1,
    )
    return tune.Tuner(trainable, param_space={}, tune_config=tune_config, run_config=run_config), trainable, m, actor


CONFIG_COLUMNS = ("episodes", "env_steps", "stopped_by_asha", "diverged", "val_sharpe", "val_sharpe_std",
                  "val_return", "episode_return", "loss", "time_total_s", "node_ip")


def config_table(exp_dir: Path, metric: str) -> pd.DataFrame:
    """Every configuration tried: status, hyperparameters, budget used, whether ASHA stopped it or it diverged,
    validation metrics, and its pack (the Tune trial that trained it)."""
    from ray.tune import ExperimentAnalysis

    records = read_members(exp_dir)
    rows = []
    for t in ExperimentAnalysis(str(exp_dir)).trials:
        last = members_of(t.last_result or {})
        for member in (t.config or {}).get("pack", []):
            cid = member["id"]
            rec = records.get(cid)
            row: dict[str, Any] = {"config_id": cid, "pack_id": t.trial_id}
            row["status"] = "TERMINATED" if rec is not None else ("ERROR" if t.status == "ERROR" else t.status)
            row.update(member["params"])
            src = rec if rec is not None else last.get(cid, {})
            for key in CONFIG_COLUMNS:
                row[key] = src.get(key)
            row["stopped_by_asha"] = bool(row["stopped_by_asha"])
            row["diverged"] = bool(row["diverged"])
            row["full_budget"] = bool(rec is not None and rec.get("outcome") == "finished")
            row["selected_episode"] = rec.get("selected_episode") if rec else None
            row["evaluations"] = len(rec.get("evaluations") or []) if rec else None
            row["error"] = row["status"] == "ERROR"
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(metric, ascending=False, na_position="last").reset_index(drop=True)
    return df


def _best_config(exp_dir: Path, df: pd.DataFrame, metric: str) -> tuple[str, Path, dict]:
    """The winner: the best validation score among configurations that reached their full budget (any finished
    one that did not diverge, if none did)."""
    done = df[(df["status"] == "TERMINATED") & ~df["diverged"]]
    full = done[done["full_budget"]]
    pool = full if len(full) else done
    if not len(pool):
        raise DqlrayError(f"{exp_dir}: no configuration finished; see the trial errors above")
    records = read_members(exp_dir)
    # Full-budget configurations always leave a checkpoint; in the fallback a stopped one may not have one.
    for cid in pool.sort_values(metric, ascending=False)["config_id"]:
        ckpt = member_checkpoint(exp_dir, records[str(cid)])
        if ckpt is not None:
            return str(cid), ckpt, dict(records[str(cid)]["params"])
    raise DqlrayError(f"{exp_dir}: no finished configuration has a checkpoint to evaluate")


def finish_sweep(run: SweepRun, data: OHLCV, out: Any = print) -> dict[str, Any]:
    """Tables, the one test evaluation of the winner with its verdict, and the best config YAML."""
    sf = run.sweep_file
    exp = experiment_dir(run)
    metric = sf.sweep.metric
    df = config_table(exp, metric)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(exp / "trials.csv", buf.getvalue())
    shown = [c for c in df.columns if c not in ("error", "loss", "episode_return", "node_ip", "full_budget",
                                                "selected_episode", "evaluations")]
    out("\nAll configurations (validation metrics; the test split is not used to rank):")
    out(df[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    summary_path = exp / "summary.json"
    if summary_path.exists():  # the test split is touched once: a completed sweep keeps its first evaluation
        summary = json.loads(summary_path.read_text())
        out(f"\nTest evaluation already done on {summary.get('evaluated')}; not repeated. See {summary_path}")
        return summary
    best_id, ckpt, params = _best_config(exp, df, metric)
    best_row = df[df["config_id"] == best_id].iloc[0]
    cfg = trial_config(sf.base, params)
    market = build_market(cfg, data)
    tried = df[df[metric].notna()]
    # Every checkpoint the selection could choose among counts: one per configuration, or with train.select every
    # validation evaluation of every configuration (issue 12). The spread of unskilled Sharpe ratios comes from the
    # configurations' validation Sharpe (the evaluations are values of the ranking metric, perhaps not a Sharpe).
    sharpes = tried["val_sharpe"].to_numpy(dtype=float)
    sharpes = sharpes[np.isfinite(sharpes)]
    n_candidates = len(tried)
    if sf.base.train.select != "last":
        n_candidates = max(n_candidates, sum(1 for rec in read_members(exp).values()
                                             for v in rec.get("evaluations") or [] if v is not None and np.isfinite(v)))
    # The search check reads validation returns only: computed before the test split is touched, so a failure
    # here leaves the test split untouched for a rerun.
    search = search_record(exp, [str(c) for c in tried["config_id"]], best_id, market, cfg, n_candidates)
    learner = learner_from_checkpoint(cfg, market, ckpt)
    evaluation, curves = evaluate_all(learner, market, cfg, "test")
    save_curves(exp, curves, "test")
    verdict = record_test_verdict(exp, curves, market, cfg, search)
    dsr = deflated_sharpe_of_winner(curves["agent"].returns, sharpes, cfg.train.periods_per_year, n_candidates)
    best_cfg = cfg.replace({"train": {"experiment_name": f"{run.experiment_name}_best", "keep_checkpoints": 3}})
    atomic_write_text(exp / "best_config.yaml",
                      f"# Best of {len(tried)} configurations of sweep {run.experiment_name} ({best_id}), by "
                      f"validation {metric}.\n# Re-train with: python train_single.py --config "
                      f"{exp / 'best_config.yaml'}\n" + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    summary = {
        "experiment": run.experiment_name,
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "search": sf.sweep.search,
        "metric": metric,
        "n_trials": int(len(tried)),
        "n_candidates": int(n_candidates),
        "n_packs": int(df["pack_id"].nunique()),
        "n_stopped_by_asha": int(df["stopped_by_asha"].sum()),
        "n_diverged": int(df["diverged"].sum()),
        "n_full_budget": int(df["full_budget"].sum()),
        "n_errors": int(df["error"].sum()),
        "best_trial": best_id,
        "best_pack": str(best_row["pack_id"]),
        "best_params": params,
        "best_val": {k: finite_or_none(best_row[k]) for k in ("val_sharpe", "val_sharpe_std", "val_return")},
        "selected_episode": finite_or_none(best_row["selected_episode"]),
        "test": evaluation,
        "verdict": verdict.to_dict(),
        "deflated_sharpe": dsr,
        "data_file": cfg.data.data_file,
        "data_hash": data_hash(data),
        "git_commit": git_commit(),
        "versions": package_versions(),
    }
    write_json(summary_path, summary)
    out(f"\nBest configuration {best_id} (validation {metric} {fmt(best_row[metric], 'float3')}); "
        f"test split, evaluated once, costs {evaluation['costs_bps']:.1f} bps:")
    out(format_metrics_table(evaluation))
    out("")
    for line in verdict_lines(summary["verdict"]):
        out(line)
    if search is None:
        out("  (no validation returns of the configurations were kept: check 3, the deflated Sharpe of the validation "
            "information ratio and the PBO, is left out)")
    among = (f"{dsr['n_trials']} configurations" if n_candidates == len(tried) else
             f"{dsr['n_trials']} checkpoints ({len(tried)} configurations, every validation evaluation)")
    out(f"Detail, not the verdict: {zero_null_dsr_text(dsr, among)}")
    out(f"Best config: {exp / 'best_config.yaml'}")
    return summary


def deflated_sharpe_of_winner(seed_returns: np.ndarray, trial_sharpes: np.ndarray, periods: int,
                              n_trials: int | None = None) -> dict[str, Any]:
    """The Deflated Sharpe Ratio of the winner, per seed, on the statistic the trials were ranked by.

    Trials were ranked by the mean over seeds of per-seed Sharpe ratios, so each of the winner's seeds is deflated
    on its own test returns (not the returns of an equal-weight blend of seeds, a different and diversified
    strategy) against the best that ``len(trial_sharpes)`` unskilled trials would reach, whose spread is the trials'
    validation Sharpe spread. ``n_trials`` (default ``len(trial_sharpes)``) counts every candidate the selection chose
    among (checkpoints too, with ``train.select``). ``dsr`` is the mean over seeds, ``dsr_min`` the weakest seed.
    """
    per_seed = [deflated_sharpe(r, trial_sharpes, periods=periods, n_trials=n_trials) for r in seed_returns]
    return {
        "null": "a Sharpe ratio of zero, not the benchmark: a detail, not the verdict (issue 11)",
        "dsr": float(np.mean([d["dsr"] for d in per_seed])),
        "dsr_min": float(np.min([d["dsr"] for d in per_seed])),
        "dsr_per_seed": [d["dsr"] for d in per_seed],
        "sharpe": float(np.mean([d["sharpe"] for d in per_seed])),
        "sr0": per_seed[0]["sr0"],
        "n_trials": per_seed[0]["n_trials"],
        "split": "test (SR0 from the trials' validation Sharpe ratios)",
    }


def run_sweep(run: SweepRun, out: Any = print, stop_requested: Any = None,
              trainable: Callable[..., None] | None = None) -> int:
    """Run (or resume) the sweep; 0 when complete, 75 when stopped with its state saved (resume with --resume).

    The experiment folder is locked while the sweep runs (a second sweep of the same name is refused with one line);
    a local Ray (no ``--address``) is private, loopback-only and cleaned up after a crash
    (:mod:`dqlray.tuning.local_ray`). ``trainable`` replaces :func:`pack_trainable` (tests wrap it to inject a
    crash).
    """
    sf = run.sweep_file
    data = load_ohlcv(sf.base.data.data_file)
    market = build_market(sf.base, data)  # refuse a file too short for the window and splits before starting Ray
    exp = experiment_dir(run)
    if run.resume and not (exp / META_FILE).exists():
        raise DqlrayError(f"{exp}: no experiment to resume")
    with hold_folder(exp, command="tune_main.py", out=out):
        if ray_address(run) is not None:
            return _run_locked(run, data, market, out, stop_requested, trainable, None)
        with local_ray_environment(exp, out) as local:  # before Ray is imported: it reads the settings at import
            return _run_locked(run, data, market, out, stop_requested, trainable, local)


def _run_locked(run: SweepRun, data: OHLCV, market: Any, out: Any, stop_requested: Any,
                trainable: Callable[..., None] | None, local: LocalRay | None) -> int:
    import ray
    from ray import tune

    from dqlray.notify.tune_callback import TelegramTuneCallback
    from dqlray.tuning.room import RoomWatch, SweepRoom
    from dqlray.tuning.warmup import WarmUp

    sf = run.sweep_file
    exp = experiment_dir(run)
    if run.resume and not tune.Tuner.can_restore(str(exp.resolve())):
        out(f"{exp}: stopped before its first trial; starting it now")  # e.g. SIGUSR1 during start-up
        run = dataclasses.replace(run, resume=False)
    if not run.resume and any(exp.glob("experiment_state-*.json")):
        raise DqlrayError(f"{exp} already holds a sweep; use --resume to continue it, or another --experiment-name")
    # Tune's own state files would be cut short on a full disk: refuse up front, and stop in time (issue 13).
    sw = sf.sweep
    concurrent = sw.max_concurrent or (max(1, int((os.cpu_count() or 1) // sw.cpus_per_trial)) if local else 1)
    m = pack_size(sf, concurrent)
    remaining = expected_configs(sf) - (len(read_members(exp)) if run.resume else 0)
    # A pack checkpoints all its configurations at once; each configuration also keeps its own networks.
    room = SweepRoom.estimate(m * checkpoint_bytes(sf.base, market), -(-remaining // m), concurrent)
    room.check_before_start(exp, out)
    meta_path = exp / META_FILE
    if run.resume and meta_path.exists():  # a resumed sweep keeps the record of how it was started
        meta = json.loads(meta_path.read_text())
        if meta.get("data_hash") != data_hash(data):
            raise DqlrayError(f"{sf.base.data.data_file}: data hash {data_hash(data)} differs from the sweep's "
                              f"{meta.get('data_hash')} ({meta_path}): the file changed since the sweep started")
        meta.setdefault("resumed", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                               "git_commit": git_commit(),
                                               **{k: getattr(sf.sweep, k) for k in PLACEMENT_KEYS}})
    else:
        meta = {"experiment": run.experiment_name, **sweep_file_dict(sf), "space": space_summary(sf),
                "data_hash": data_hash(data), "expected_configs": expected_configs(sf), "git_commit": git_commit(),
                "versions": package_versions()}
    notifier = get_notifier()  # the process's one notifier, shared with the dashboard callback (issue 15)
    sweep_notifier = SweepNotifier(notifier, run.title or run.experiment_name)
    cluster = _init_ray(run, out, local)
    _stop_on_sigterm()
    try:
        callbacks = [TelegramTuneCallback(
            experiment=run.title or run.experiment_name, notifier=notifier, metric=sf.sweep.metric, mode="max",
            num_samples=expected_configs(sf), space_summary=space_summary(sf), max_t=sf.base.train.episodes)]
        callbacks += [RoomWatch(str(exp), room.reserve), WarmUp()]
        tuner, wrapped, m, _rungs = _build_tuner(run, data, cluster, callbacks, trainable or pack_trainable, out)
        meta.setdefault("pack_size", m)  # what sweep.pack resolved to when the sweep started
        write_json(meta_path, meta)  # only now: a sweep refused for its resources leaves no trace
        if run.resume:
            tuner = tune.Tuner.restore(str(exp.resolve()), trainable=wrapped, resume_unfinished=True,
                                       resume_errored=True)
        if stop_requested is not None and stop_requested():
            out("Stop requested (SIGUSR1) before the sweep started; nothing to save. Resume with --resume.")
            return EXIT_RESUMABLE
        try:
            with tune_settings(trial_slots(sf.sweep, cluster.total)):
                tuner.fit()
        except (OSError, EOFError) as e:
            # A write of Tune's failed (an EOFError is Tune reading back an error file a full disk left empty).
            room.raise_if_short(exp, "the sweep's state", e)
            raise
        from ray.tune import ExperimentAnalysis

        trials = ExperimentAnalysis(str(exp.resolve())).trials
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        handed_out = sum(len((t.config or {}).get("pack", [])) for t in trials)
        if unfinished or handed_out < expected_configs(sf):
            done = len(read_members(exp))
            resume_cmd = run.resume_command or (f"python tune_main.py --resume --experiment-name "
                                                f"{run.experiment_name} --storage-path {run.storage_path}")
            room.raise_if_short(exp, "the next checkpoints", None,
                                f"; the sweep stopped with its state saved after {done} of {expected_configs(sf)} "
                                f"configurations: free some space, then resume with: {resume_cmd}")
            out(f"\nSweep stopped with {done} of {expected_configs(sf)} configurations finished; state saved. "
                f"Resume with: {resume_cmd}")
            sweep_notifier.time_limit()
            return EXIT_RESUMABLE
        summary = finish_sweep(run, data, out)
        report_png = report_after_run(exp, out)
        if "test" in summary:
            # the deflated Sharpe shown is the verdict's (of the validation IR, among its figures), not the zero-null
            # detail, whose message line would read as a claim of skill (issue 11)
            sweep_notifier.finished(
                best_config=summary["best_params"],
                test_metrics={k: v["mean"] for k, v in summary["test"]["agent"]["summary"].items()},
                deflated_sharpe=None, n_trials=summary["n_trials"], image_path=report_png,
                **message_parts(summary["test"], summary.get("verdict")))
        return 0
    except BaseException as e:
        if not isinstance(e, (DqlrayError, KeyboardInterrupt)):
            sweep_notifier.error(e)  # never raises: a notification must never mask the real error
        raise
    finally:
        ray.shutdown()
        sweep_notifier.close()


def _stop_on_sigterm() -> None:
    """SIGTERM stops the sweep as SIGUSR1 does (Tune saves the state; exit 75; the folder is unlocked). Set again
    after ``ray.init``, whose failure-signal handler takes SIGTERM over and aborts the driver (exit 134)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGUSR1))
