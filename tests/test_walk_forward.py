"""Walk-forward runs and sweeps end to end (issue 11): `--walk-forward 3` on the bundled data completes, a killed
driver resumes without running a finished fold again, `--fold` runs one fold, and a resume stitches them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data" / "test_small.csv")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _kill_when(cmd, cwd, ready, timeout=300):
    """Start ``cmd`` in its own process group and SIGKILL the group (the driver and any Ray it started) once
    ``ready()`` holds; fail if the command ends first."""
    p = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None and not ready():
        time.sleep(0.05)
    assert p.poll() is None, "the command ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _run(cmd, cwd, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    return proc


@pytest.mark.slow
def test_single_run_walk_forward_resumes_after_a_kill_without_rerunning_a_finished_fold(tmp_path):
    exp = tmp_path / "results" / "wf"
    flags = ["--data_file", DATA, "--episodes", "8", "--num_seeds", "2", "--no-progress", "--results_dir",
             str(tmp_path / "results"), "--experiment_name", "wf", "--set", "env.episode_length=150", "--set",
             "agent.learning_starts=50", "--set", "train.checkpoint_every=2", "--set", "verdict.n_boot=199", "--set",
             "verdict.n_null=199"]
    cmd = [sys.executable, str(ROOT / "train_single.py"), *flags]
    _kill_when([*cmd, "--walk-forward", "3"], tmp_path,
               lambda: (exp / "fold_0" / "eval.json").exists() and (exp / "fold_1" / "metrics.csv").exists())
    fold0 = {p.name: p.read_bytes() for p in (exp / "fold_0").iterdir() if p.is_file() and p.name != "dqlray.lock"}
    assert not (exp / "fold_1" / "eval.json").exists() and not (exp / "summary.json").exists()
    # --resume alone brings --walk-forward 3 back from the experiment folder
    proc = _run([*cmd, "--resume"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Fold 0: finished before, not run again" in proc.stdout
    assert {n: (exp / "fold_0" / n).read_bytes() for n in fold0} == fold0  # fold 0 untouched
    s = json.loads((exp / "summary.json").read_text())
    assert s["kind"] == "walk_forward" and not s["tuned"] and [f["fold"] for f in s["folds"]] == [0, 1, 2]
    v = s["verdict"]
    assert v["folds"] == 3 and "dsr_active" not in v and f"Verdict: {v['statement']}" in proc.stdout
    assert (exp / "report" / "report.html").exists() and (exp / "equity_test.csv").exists()
    # the folds' test blocks follow each other; a different number of folds is refused
    assert [f["test"]["bars"][0] for f in s["folds"][1:]] == [f["test"]["bars"][1] for f in s["folds"][:-1]]
    bad = _run([*cmd, "--resume", "--walk-forward", "4"], tmp_path)
    assert bad.returncode == 2 and "data.walk_forward" in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


@pytest.mark.slow
def test_walk_forward_sweep_fold_by_fold_resume_and_stitch(tmp_path):
    sweep = {"data": {"data_file": DATA}, "env": {"episode_length": 60},
             "agent": {"learning_starts": 50, "buffer_size": 2000},
             "train": {"episodes": 2, "num_seeds": 2, "checkpoint_every": 1},
             "verdict": {"n_boot": 199, "n_null": 199},
             "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}},
             "sweep": {"search": "random", "num_samples": 2, "grace_period": 1, "seed": 3, "max_concurrent": 2}}
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(sweep))
    store = tmp_path / "store"
    exp = store / "wfs"
    base = [sys.executable, str(ROOT / "tune_main.py"), "--experiment-name", "wfs", "--storage-path", str(store),
            "--no-dashboard"]
    _kill_when([*base, "--config", str(cfg), "--walk-forward", "3"], tmp_path,
               lambda: (exp / "fold_0" / "summary.json").exists())

    def results(fold):
        return {f.parent.name: f.read_text() for f in (exp / f"fold_{fold}").glob("trial_*/result.json")}

    fold0 = results(0)
    assert len(fold0) == 2 and not (exp / "summary.json").exists()
    # one fold alone (as one driver of several would): fold 1 only, no stitching yet
    one = _run([*base, "--resume", "--fold", "1"], tmp_path)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert (exp / "fold_1" / "summary.json").exists() and not (exp / "fold_2").exists()
    assert not (exp / "summary.json").exists() and "2 of 3 folds finished" in one.stdout
    # the final resume runs what is left and stitches; finished folds are not run again
    proc = _run([*base, "--resume"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Fold 0: finished before, not run again" in proc.stdout and results(0) == fold0
    s = json.loads((exp / "summary.json").read_text())
    assert s["kind"] == "walk_forward" and s["tuned"] and len(s["segments"]) == 3
    v = s["verdict"]
    for key in ("benchmark", "beats_benchmark", "info_ratio", "info_ratio_ci", "p_benchmark", "p_random",
                "dsr_active", "pbo", "n_trials", "statement"):
        assert key in v
    assert v["folds"] == 3 and v["dsr_active"] is None and v["statement"].startswith(
        "The walk-forward agent (3 folds, each tuned on its own past) ")
    for f in s["folds"]:  # each fold keeps its own search check, winner and config
        assert f["verdict"]["n_trials"] == 2 and f["verdict"]["pbo"] is not None and f["best_params"]
        assert f["best_trial"] in {p.name for p in (exp / f["dir"] / "configs").iterdir()}
    html = (exp / "report" / "report.html").read_text()
    assert "Each fold's winning configuration" in html and v["statement"].split(":")[0] in html
    meta = json.loads((exp / "walk_forward.json").read_text())
    assert meta["base_config"]["data"]["walk_forward"] == 3 and len(meta["folds"]) == 3
    again = _run([*base, "--resume"], tmp_path)
    assert again.returncode == 0 and "stitched before" in again.stdout
