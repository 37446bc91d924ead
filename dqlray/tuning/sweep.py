"""The sweep driver behind ``tune_main.py``: Ray Tune with ASHA and Optuna, resumable, honest about the winner.

Trials are scored on the validation split only. When the sweep is complete, the best trial's checkpoint is evaluated
once on the untouched test split (every seed, next to every baseline) with the Deflated Sharpe Ratio over the number
of trials actually tried; a completed experiment is never re-evaluated on test.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dqlray.data import OHLCV, data_hash, load_ohlcv
from dqlray.errors import DqlrayError
from dqlray.metrics import deflated_sharpe, finite_or_none, interpret_dsr
from dqlray.notify import SweepNotifier, get_notifier
from dqlray.runinfo import atomic_write_text, git_commit, package_versions, write_json
from dqlray.trainer import build_market, list_checkpoints
from dqlray.tuning.space import SweepFile, space_summary, trial_config, tune_space
from dqlray.tuning.trainable import dqn_trainable
from dqlray.workflow import evaluate_all, format_metrics_table, learner_from_checkpoint, save_curves

TIME_ATTR = "episodes"  # the same in every trial: one episode = the same number of env steps per seed
EXIT_RESUMABLE = 75


@dataclass(frozen=True)
class SweepRun:
    """Where and how a sweep runs (command-line level settings, not hyperparameters)."""

    sweep_file: SweepFile
    experiment_name: str
    storage_path: str
    address: str | None = None
    resume: bool = False
    dashboard: bool = True


def experiment_dir(run: SweepRun) -> Path:
    """``<storage_path>/<experiment_name>``: Tune's experiment folder, where the sweep's tables go too."""
    return Path(run.storage_path).resolve() / run.experiment_name


def _init_ray(run: SweepRun, out: Any) -> dict[str, float]:
    import ray

    address = run.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "configure_logging": False}
    if address is None:
        kwargs["include_dashboard"] = run.dashboard
        if not run.dashboard:
            kwargs["num_cpus"] = os.cpu_count()
    ctx = ray.init(**kwargs)
    token_file = Path.home() / ".ray" / "auth_token"
    if address is None and token_file.exists() and token_file.stat().st_mode & 0o077:
        token_file.chmod(0o600)  # Ray 2.60 writes it 0644: readable by every user of a shared login node
    url = getattr(ctx, "dashboard_url", None)
    if url:
        out(f"Ray dashboard: http://{url}  (token-protected: the token is in ~/.ray/auth_token or "
            "$RAY_AUTH_TOKEN_PATH; never share it)")
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    out(f"Ray cluster: {len(nodes)} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")
    return res


def _build_tuner(run: SweepRun, data: OHLCV, resources: dict[str, float], callbacks: list) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    sf = run.sweep_file
    sw = sf.sweep
    if sw.gpus_per_trial > 0 and resources.get("GPU", 0) <= 0:
        raise DqlrayError(f"--gpus-per-trial {sw.gpus_per_trial} but the Ray cluster has no GPUs")
    res = {"cpu": sw.cpus_per_trial, "gpu": sw.gpus_per_trial}
    base = sf.base
    if sw.gpus_per_trial > 0:
        base = base.replace({"train": {"device": "cuda"}})
    trainable = tune.with_resources(tune.with_parameters(dqn_trainable, data=data, base=base), res)
    auto = max(1, int(resources.get("CPU", 1) // sw.cpus_per_trial))
    if sw.gpus_per_trial > 0:
        auto = min(auto, max(1, int(resources.get("GPU", 0) / sw.gpus_per_trial)))
    concurrent = sw.max_concurrent or auto
    scheduler = None
    if sw.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=base.train.episodes, grace_period=sw.grace_period,
                                  reduction_factor=sw.reduction_factor)
    space = tune_space(sf)
    if sw.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = ConcurrencyLimiter(OptunaSearch(seed=sw.seed), max_concurrent=concurrent)
        num_samples = sw.num_samples
    elif sw.search == "random":
        search_alg = BasicVariantGenerator(random_state=sw.seed, max_concurrent=concurrent)
        num_samples = sw.num_samples
    else:
        search_alg = BasicVariantGenerator(max_concurrent=concurrent)
        num_samples = 1  # a grid runs each point exactly once (grid_search multiplies with num_samples)
    tune_config = tune.TuneConfig(metric=sw.metric, mode="max", search_alg=search_alg, scheduler=scheduler,
                                  num_samples=num_samples, reuse_actors=True,
                                  trial_dirname_creator=lambda t: f"trial_{t.trial_id}")
    run_config = tune.RunConfig(
        name=run.experiment_name, storage_path=str(Path(run.storage_path).resolve()),
        failure_config=tune.FailureConfig(max_failures=sw.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks, verbose=1,
    )
    return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config), trainable


def expected_trials(sf: SweepFile) -> int:
    """How many trials the sweep runs when complete."""
    if sf.sweep.search == "grid":
        return int(np.prod([len(v) for v in sf.grid.values()]))
    return sf.sweep.num_samples


def trial_table(exp_dir: Path, max_t: int, metric: str) -> pd.DataFrame:
    """Every trial: status, hyperparameters, budget used, whether ASHA stopped it, validation metrics."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(exp_dir))
    rows = []
    for t in analysis.trials:
        last = t.last_result or {}
        row: dict[str, Any] = {"trial_id": t.trial_id, "status": t.status}
        for k, v in (t.config or {}).items():
            row[k] = v
        episodes = last.get(TIME_ATTR)
        row["episodes"] = episodes
        row["env_steps"] = last.get("env_steps")
        row["stopped_by_asha"] = bool(t.status == "TERMINATED" and episodes is not None and episodes < max_t)
        for key in ("val_sharpe", "val_sharpe_std", "val_return", "episode_return", "loss", "time_total_s"):
            row[key] = last.get(key)
        row["node_ip"] = last.get("node_ip")
        row["error"] = bool(t.status == "ERROR")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(metric, ascending=False, na_position="last").reset_index(drop=True)
    return df


def _best_trial(analysis_dir: Path, df: pd.DataFrame, max_t: int, metric: str) -> tuple[str, Path, dict]:
    """The winner: the best validation score among trials that used the full budget (any, if none did)."""
    from ray.tune import ExperimentAnalysis

    full = df[(df["episodes"] == max_t) & (df["status"] == "TERMINATED")]
    pool = full if len(full) else df[df["status"] == "TERMINATED"]
    if not len(pool):
        raise DqlrayError(f"{analysis_dir}: no trial finished; see the trial errors above")
    analysis = ExperimentAnalysis(str(analysis_dir))
    by_id = {t.trial_id: t for t in analysis.trials}
    # Full-budget trials always end with a checkpoint of their final state; in the fallback (no trial reached the
    # full budget) a trial stopped before its first checkpoint cannot be evaluated, so the next best is taken.
    for trial_id in pool.sort_values(metric, ascending=False)["trial_id"]:
        trial = by_id[str(trial_id)]
        ckpt = analysis.get_last_checkpoint(trial)
        if ckpt is not None:
            return str(trial_id), Path(ckpt.path), dict(trial.config)
    raise DqlrayError(f"{analysis_dir}: no finished trial has a checkpoint to evaluate")


def finish_sweep(run: SweepRun, data: OHLCV, out: Any = print) -> dict[str, Any]:
    """Tables, the one test evaluation of the winner with the deflated Sharpe, and the best config YAML."""
    sf = run.sweep_file
    exp = experiment_dir(run)
    max_t = sf.base.train.episodes
    metric = sf.sweep.metric
    df = trial_table(exp, max_t, metric)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(exp / "trials.csv", buf.getvalue())
    shown = [c for c in df.columns if c not in ("error", "loss", "episode_return", "node_ip")]
    out("\nAll trials (validation metrics; the test split is not used to rank):")
    out(df[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    summary_path = exp / "summary.json"
    if summary_path.exists():  # the test split is touched once: a completed sweep keeps its first evaluation
        summary = json.loads(summary_path.read_text())
        out(f"\nTest evaluation already done on {summary.get('evaluated')}; not repeated. See {summary_path}")
        return summary
    best_id, ckpt_dir, params = _best_trial(exp, df, max_t, metric)
    best_row = df[df["trial_id"] == best_id].iloc[0]
    cfg = trial_config(sf.base, params)
    market = build_market(cfg, data)
    ckpt = ckpt_dir if (ckpt_dir / "state.pt").exists() else list_checkpoints(ckpt_dir)[-1]
    learner = learner_from_checkpoint(cfg, market, ckpt)
    evaluation, curves = evaluate_all(learner, market, cfg, "test")
    save_curves(exp, curves, "test")
    tried = df[df[metric].notna()]
    dsr = deflated_sharpe_of_winner(curves["agent"].returns, tried["val_sharpe"].to_numpy(dtype=float),
                                    cfg.train.periods_per_year)
    best_cfg = cfg.replace({"train": {"experiment_name": f"{run.experiment_name}_best", "keep_checkpoints": 3}})
    atomic_write_text(exp / "best_config.yaml",
                      f"# Best of {len(tried)} trials of sweep {run.experiment_name} (trial {best_id}), by validation "
                      f"{metric}.\n# Re-train with: python train_single.py --config {exp / 'best_config.yaml'}\n"
                      + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    summary = {
        "experiment": run.experiment_name,
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "search": sf.sweep.search,
        "metric": metric,
        "n_trials": int(len(tried)),
        "n_stopped_by_asha": int(df["stopped_by_asha"].sum()),
        "n_errors": int(df["error"].sum()),
        "best_trial": best_id,
        "best_params": params,
        "best_val": {k: finite_or_none(best_row[k]) for k in ("val_sharpe", "val_sharpe_std", "val_return")},
        "test": evaluation,
        "deflated_sharpe": dsr,
        "data_file": cfg.data.data_file,
        "data_hash": data_hash(data),
        "git_commit": git_commit(),
        "versions": package_versions(),
    }
    write_json(summary_path, summary)
    out(f"\nBest trial {best_id} (validation {metric} {summary['best_val']['val_sharpe']:.3f}); "
        f"test split, evaluated once, costs {evaluation['costs_bps']:.1f} bps:")
    out(format_metrics_table(evaluation))
    out(f"\nDeflated Sharpe Ratio: {dsr['dsr']:.3f} (mean over seeds, weakest seed {dsr['dsr_min']:.3f}; best of "
        f"{dsr['n_trials']} trials; test Sharpe {dsr['sharpe']:.2f} per seed against {dsr['sr0']:.2f} expected from "
        f"the best of {dsr['n_trials']} unskilled trials). {interpret_dsr(dsr['dsr'])}")
    out(f"Best config: {exp / 'best_config.yaml'}")
    return summary




def deflated_sharpe_of_winner(seed_returns: np.ndarray, trial_sharpes: np.ndarray, periods: int) -> dict[str, Any]:
    """The Deflated Sharpe Ratio of the winner, per seed, on the statistic the trials were ranked by.

    Trials were ranked by the mean over seeds of per-seed Sharpe ratios, so each of the winner's seeds is deflated
    on its own test returns (not the returns of an equal-weight blend of seeds, a different and diversified
    strategy) against the best that ``len(trial_sharpes)`` unskilled trials would reach, whose spread is the trials'
    validation Sharpe spread. ``dsr`` is the mean over seeds, ``dsr_min`` the weakest seed.
    """
    per_seed = [deflated_sharpe(r, trial_sharpes, periods=periods) for r in seed_returns]
    return {
        "dsr": float(np.mean([d["dsr"] for d in per_seed])),
        "dsr_min": float(np.min([d["dsr"] for d in per_seed])),
        "dsr_per_seed": [d["dsr"] for d in per_seed],
        "sharpe": float(np.mean([d["sharpe"] for d in per_seed])),
        "sr0": per_seed[0]["sr0"],
        "n_trials": per_seed[0]["n_trials"],
        "split": "test (SR0 from the trials' validation Sharpe ratios)",
    }


def run_sweep(run: SweepRun, out: Any = print, stop_requested: Any = None) -> int:
    """Run (or resume) the sweep; 0 when complete, 75 when stopped with its state saved (resume with --resume)."""
    import ray
    from ray import tune

    from dqlray.notify.tune_callback import TelegramTuneCallback

    sf = run.sweep_file
    data = load_ohlcv(sf.base.data.data_file)
    build_market(sf.base, data)  # refuse a file too short for the window and splits before starting Ray
    exp = experiment_dir(run)
    if run.resume and not tune.Tuner.can_restore(str(exp.resolve())):
        if not (exp / "sweep_meta.json").exists():
            raise DqlrayError(f"{exp}: no experiment to resume")
        out(f"{exp}: stopped before its first trial; starting it now")  # e.g. SIGUSR1 during start-up
        run = dataclasses.replace(run, resume=False)
    if not run.resume and exp.exists() and any(exp.glob("experiment_state-*.json")):
        raise DqlrayError(f"{exp} already holds a sweep; use --resume to continue it, or another --experiment-name")
    exp.mkdir(parents=True, exist_ok=True)
    write_json(exp / "sweep_meta.json", {
        "experiment": run.experiment_name, "sweep_file": sf.source, "space": space_summary(sf),
        "sweep": sf.sweep.__dict__, "base_config": sf.base.to_dict(), "data_hash": data_hash(data),
        "expected_trials": expected_trials(sf), "git_commit": git_commit(), "versions": package_versions(),
    })
    notifier = get_notifier()  # the process's one notifier, shared with the dashboard callback (issue 15)
    sweep_notifier = SweepNotifier(notifier, run.experiment_name)
    resources = _init_ray(run, out)
    try:
        callbacks = [TelegramTuneCallback(
            experiment=run.experiment_name, notifier=notifier, metric=sf.sweep.metric, mode="max",
            num_samples=expected_trials(sf), space_summary=space_summary(sf), max_t=sf.base.train.episodes)]
        tuner, trainable = _build_tuner(run, data, resources, callbacks)
        if run.resume:
            tuner = tune.Tuner.restore(str(exp.resolve()), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        if stop_requested is not None and stop_requested():
            out("Stop requested (SIGUSR1) before the sweep started; nothing to save. Resume with --resume.")
            return EXIT_RESUMABLE
        tuner.fit()
        from ray.tune import ExperimentAnalysis

        trials = ExperimentAnalysis(str(exp.resolve())).trials
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
        if unfinished or len(trials) < expected_trials(sf):
            out(f"\nSweep stopped with {len(trials) - len(unfinished)} of {expected_trials(sf)} trials finished; "
                f"state saved. Resume with: python tune_main.py --resume --experiment-name {run.experiment_name} "
                f"--storage-path {run.storage_path}")
            sweep_notifier.time_limit()
            return EXIT_RESUMABLE
        summary = finish_sweep(run, data, out)
        report_png = _sweep_report(exp, out)
        if "test" in summary:
            dsr = summary["deflated_sharpe"]
            sweep_notifier.finished(
                best_config=summary["best_params"],
                test_metrics={k: v["mean"] for k, v in summary["test"]["agent"]["summary"].items()},
                baselines={"buy&hold": summary["test"]["baselines"]["buy_and_hold"]},
                deflated_sharpe=dsr["dsr"], n_trials=dsr["n_trials"], image_path=report_png)
        return 0
    except BaseException as e:
        if not isinstance(e, (DqlrayError, KeyboardInterrupt)):
            sweep_notifier.error(e)  # never raises: a notification must never mask the real error
        raise
    finally:
        ray.shutdown()
        sweep_notifier.close()


def _sweep_report(exp: Path, out: Any) -> str | None:
    from dqlray.report import build_sweep_report

    try:
        rep = build_sweep_report(exp)
    except Exception as e:  # noqa: BLE001 - the sweep is saved; `dqlray report DIR` can retry
        out(f"warning: no report: {type(e).__name__}: {e}")
        return None
    out(f"Report: {rep.html}")
    return str(rep.equity_png) if getattr(rep, "equity_png", None) else None
