"""``tune_main.py --walk-forward N``: every walk-forward fold runs its own sweep (issue 11).

Fold i is an ordinary sweep (:func:`dqlray.tuning.sweep.run_sweep`) of the sweep file with ``data.fold = i``, in
``<storage>/<experiment>/fold_<i>``: it tunes on its own training and validation parts, and its winner is tested
once on its own test block, with its own verdict (check 3, the search check, included). When every fold is done their
test series are stitched (:mod:`dqlray.walkforward`). Folds are independent Tune work: by default they run one after
another on the whole cluster; ``--fold I`` runs one, so several drivers (or a SLURM array, docs/slurm.md) can take
one each, and a final ``--resume`` stitches. A finished fold is never run again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from dqlray.cli import EXIT_RESUMABLE
from dqlray.data import data_hash, load_ohlcv
from dqlray.errors import DqlrayError
from dqlray.notify import SweepNotifier, get_notifier
from dqlray.report import report_after_run
from dqlray.runinfo import git_commit
from dqlray.tuning.space import (
    SweepFile,
    resumed_sweep_file,
    space_summary,
    sweep_difference,
    sweep_file_dict,
    sweep_file_from_dict,
)
from dqlray.tuning.sweep import META_FILE, SweepRun, run_sweep
from dqlray.verdict import message_parts
from dqlray.walkforward import (
    SUMMARY_FILE,
    WF_FILE,
    begin,
    fold_dir,
    fold_entry,
    fold_plan,
    folds_to_run,
    stitch_folds,
)


def stored_walk_forward(exp: Path, **given: Any) -> SweepFile | None:
    """The settings a walk-forward sweep was started with, flags given again checked (None: not one)."""
    path = exp / WF_FILE
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DqlrayError(f"{path}: unreadable ({e})") from None
    if stored.get("kind") != "sweep":
        raise DqlrayError(f"{exp}: a walk-forward experiment of single runs; resume it with train_single.py --resume")
    return resumed_sweep_file(sweep_file_from_dict(stored, str(path)), str(path), **given)


def run_walk_forward_sweep(run: SweepRun, *, only_fold: int | None = None, out: Any = print,
                           stop_requested: Any = None, trainable: Any = None) -> int:
    """Run (or resume) every fold's sweep of ``run`` in time order, or fold ``only_fold`` alone; then stitch.

    Returns 0 when done (all folds stitched, or the one fold asked for finished), 75 when a fold's sweep stopped with
    its state saved (resume with ``--resume``), or a fold's own exit code.
    """
    sf = run.sweep_file
    data = load_ohlcv(sf.base.data.data_file)
    plan = fold_plan(sf.base, data)
    exp = Path(run.storage_path).resolve() / run.experiment_name
    record = {"kind": "sweep", "experiment": run.experiment_name, **sweep_file_dict(sf), "space": space_summary(sf),
              "folds": plan, "data_file": sf.base.data.data_file, "data_hash": data_hash(data),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit()}

    def same(stored: dict[str, Any]) -> str | None:
        diff = sweep_difference(sweep_file_from_dict(stored, str(exp / WF_FILE)), sf)
        return None if diff is None else f"{diff[0]}: {diff[1]!r} was given, the experiment has {diff[2]!r}"

    todo = folds_to_run(len(plan), only_fold)
    begin(exp, record, resume=run.resume, joining=only_fold is not None, same=same)
    if (exp / SUMMARY_FILE).exists():
        out(f"{exp}: every fold finished and was stitched before; see {exp / SUMMARY_FILE}")
        return 0
    resume_cmd = (f"python tune_main.py --resume --experiment-name {run.experiment_name} --storage-path "
                  f"{run.storage_path}" + (f" --fold {only_fold}" if only_fold is not None else ""))
    for i in todo:
        fexp = fold_dir(exp, i)
        if (fexp / SUMMARY_FILE).exists():
            out(f"Fold {i}: finished before, not run again")
            continue
        t = plan[i]
        out(f"\nFold {i} of {len(plan)}: train {t['train']['dates'][0]} to {t['train']['dates'][1]}, validation "
            f"{t['val']['dates'][0]} to {t['val']['dates'][1]}, test {t['test']['dates'][0]} to {t['test']['dates'][1]}")
        fold_sf = dataclasses.replace(sf, base=sf.base.replace({"data": {"fold": i}}))
        fold_run = dataclasses.replace(run, sweep_file=fold_sf, experiment_name=fexp.name, storage_path=str(exp),
                                       resume=(fexp / META_FILE).exists(), title=f"{run.experiment_name}/{fexp.name}",
                                       resume_command=resume_cmd)
        code = run_sweep(fold_run, out=out, stop_requested=stop_requested, trainable=trainable)
        if code != 0 or not (fexp / SUMMARY_FILE).exists():
            return code or EXIT_RESUMABLE
    done = [i for i in range(len(plan)) if (fold_dir(exp, i) / SUMMARY_FILE).exists()]
    if only_fold is not None or len(done) < len(plan):
        out(f"\n{len(done)} of {len(plan)} folds finished; when all are, stitch them with: "
            f"python tune_main.py --resume --experiment-name {run.experiment_name} --storage-path {run.storage_path}")
        return 0
    folds = []
    for i in range(len(plan)):
        s = json.loads((fold_dir(exp, i) / SUMMARY_FILE).read_text())
        folds.append(fold_entry(plan[i], fold_dir(exp, i), verdict=s.get("verdict"), best_trial=s.get("best_trial"),
                                best_params=s.get("best_params"), n_trials=s.get("n_trials"),
                                best_val=s.get("best_val"),
                                test_sharpe=s["test"]["agent"]["summary"]["sharpe"]["mean"],
                                benchmark_sharpe=s["test"]["baselines"].get(sf.base.verdict.benchmark, {}).get("sharpe")))
    summary = stitch_folds(exp, sf.base, folds, tuned=True, out=out,
                           extra={"data_file": sf.base.data.data_file, "data_hash": data_hash(data)})
    image = report_after_run(exp, out)
    notifier = SweepNotifier(get_notifier(), run.title or run.experiment_name)
    try:
        notifier.finished(best_config={f"fold {f['fold']}": f.get("best_trial") for f in folds},
                          test_metrics={k: v["mean"] for k, v in summary["test"]["agent"]["summary"].items()},
                          deflated_sharpe=None, n_trials=sum(int(f.get("n_trials") or 0) for f in folds),
                          image_path=image, **message_parts(summary["test"], summary.get("verdict")))
    finally:
        notifier.close()
    return 0
