"""A real local Ray Tune sweep: ASHA stops trials, a crashed trial resumes from its checkpoint, a killed driver
resumes without re-running finished trials, and the result files hold sane values."""

import csv
import glob
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

SWEEP = {
    "data": {"data_file": str(ROOT / "data" / "test_small.csv")},
    "env": {"episode_length": 60},
    "agent": {"learning_starts": 50, "buffer_size": 2000},
    "train": {"episodes": 6, "num_seeds": 1, "checkpoint_every": 2},
    "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}, "agent.gamma": {"uniform": [0.5, 0.99]},
               "agent.hidden": {"choice": [[16, 16], [32, 32]]}},
    "grid": {"agent.learning_rate": [1e-4, 1e-3], "agent.gamma": [0.9, 0.99]},
    "sweep": {"search": "random", "num_samples": 8, "grace_period": 1, "reduction_factor": 2, "seed": 3},
}


def write_sweep(tmp_path, train=None, **sweep):
    cfg = json.loads(json.dumps(SWEEP))
    cfg["sweep"].update(sweep)
    cfg["train"].update(train or {})
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def tune_cmd(cfg, tmp_path, name, *extra):
    return [sys.executable, str(ROOT / "tune_main.py"), "--config", str(cfg), "--experiment-name", name,
            "--storage-path", str(tmp_path / "store"), "--no-dashboard", *extra]


def results_by_trial(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for f in exp.glob("trial_*/result.json"):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def trial_statuses(exp: Path) -> dict[str, str]:
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    return {json.loads(t[0])["trial_id"]: json.loads(t[0])["status"] for t in state["trial_data"]}


@pytest.mark.slow
def test_sweep_asha_retry_and_results(tmp_path):
    cfg = write_sweep(tmp_path)
    marker = tmp_path / "fail"
    marker.mkdir()
    cmd = tune_cmd(cfg, tmp_path, "asha")
    cmd[1:2] = [str(ROOT / "tests" / "crash_once_sweep.py"), str(marker), "3"]  # the real trainable, wrapped
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (marker / "failed").exists()  # the injected crash happened
    exp = tmp_path / "store" / "asha"
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    assert len(rows) == 8 and all(r["status"] == "TERMINATED" for r in rows)
    stopped = [r for r in rows if r["stopped_by_asha"] == "True"]
    assert stopped and all(int(r["episodes"]) < 6 for r in stopped)
    assert any(int(r["episodes"]) == 6 for r in rows)
    # the crashed trial was retried from its episode-2 checkpoint: episode 3 reported twice, episode 1 once
    seqs = {k: [r["episodes"] for r in v] for k, v in results_by_trial(exp).items()}
    retried = [s for s in seqs.values() if s.count(3) == 2]
    assert len(retried) == 1 and retried[0].count(1) == 1 and retried[0][:4] == [1, 2, 3, 3]
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["n_trials"] == 8 and summary["n_stopped_by_asha"] == len(stopped)
    assert 0.0 <= summary["deflated_sharpe"]["dsr"] <= 1.0 and summary["deflated_sharpe"]["n_trials"] == 8
    assert summary["test"]["part"] == "test" and "buy_and_hold" in summary["test"]["baselines"]
    # the verdict (issue 11): every trial kept its last validation returns, ASHA-stopped ones included, so the
    # search check ranks all 8 columns
    from dqlray.tuning.validation import validation_matrix

    v = summary["verdict"]
    assert v["benchmark"] == "buy_and_hold" and v["n_trials"] == 8 and 0 <= v["pbo"] <= 1 and 0 <= v["dsr_active"] <= 1
    assert v["beats_benchmark"] == (v["p_benchmark"] <= 0.05 and v["p_random"] <= 0.05)
    vm = validation_matrix(exp, [r["trial_id"] for r in rows])
    assert vm.returns.shape[1:] == (8, 1) and vm.missing == [] and vm.returns.shape[0] > 300
    assert f"Verdict: {v['statement']}" in proc.stdout and "more likely skilled" not in proc.stdout
    assert "Detail, not the verdict: deflated Sharpe ratio against a Sharpe of zero" in proc.stdout
    assert "linear_probe" in summary["test"]["baselines"]
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert best["agent"]["learning_rate"] == pytest.approx(summary["best_params"]["agent.learning_rate"])
    # the best config is accepted by the single-run command
    check = subprocess.run([sys.executable, "-c", "from dqlray.config import load_config; import sys; "
                            "load_config(sys.argv[1])", str(exp / "best_config.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # consolidate gathers it
    cons = subprocess.run([sys.executable, "-m", "dqlray", "consolidate", "--results_dir", str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=120)
    assert cons.returncode == 0 and "asha" in cons.stdout, cons.stderr
    assert f"asha: {v['statement']}" in cons.stdout


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    cfg = write_sweep(tmp_path, search="grid", max_concurrent=1)
    exp = tmp_path / "store" / "grid"
    p = subprocess.Popen(tune_cmd(cfg, tmp_path, "grid"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 300
    finished = {}
    while time.time() < deadline and p.poll() is None:
        st = trial_statuses(exp)
        finished = {k for k, v in st.items() if v == "TERMINATED"}
        if len(finished) >= 2:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the sweep ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)  # the driver and the local Ray it started
    p.wait()
    before = {k: len(v) for k, v in results_by_trial(exp).items()}
    done_before = {f"trial_{t}" for t in finished}
    assert done_before
    proc = subprocess.run(tune_cmd(cfg, tmp_path, "grid", "--resume"), capture_output=True, text=True, timeout=400,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = results_by_trial(exp)
    for t in done_before:  # no finished trial ran again
        assert len(after[t]) == before[t], t
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)
    assert (exp / "summary.json").exists()


def test_bad_sweep_file_is_one_line(tmp_path):
    cfg = write_sweep(tmp_path)
    text = cfg.read_text().replace("agent.gamma:", "agent.gama:")
    cfg.write_text(text)
    proc = subprocess.run(tune_cmd(cfg, tmp_path, "bad"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"tune_main.py: error: {cfg}: search key 'agent.gama' is not a config field "
                                   "(use section.field, e.g. agent.learning_rate)")


@pytest.mark.slow
def test_sigusr1_saves_state_exits_75_and_resumes_with_its_own_settings(tmp_path):
    # The settings come from flags, not the file (which says 6 episodes, random search, 8 samples): a plain
    # `--resume --experiment-name` must bring them all back (issue 13, item 1).
    cfg = write_sweep(tmp_path)
    exp = tmp_path / "store" / "usr1"
    flags = ["--episodes", "30", "--search", "grid", "--max-concurrent", "1"]
    p = subprocess.Popen(tune_cmd(cfg, tmp_path, "usr1", *flags), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if any(len(r) >= 2 for r in results_by_trial(exp).values()):  # the first trial is under way
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGUSR1)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 75, out[-3000:]
    assert "Resume with: python tune_main.py --resume --experiment-name usr1" in out
    assert not (exp / "summary.json").exists()
    meta_before = json.loads((exp / "sweep_meta.json").read_text())
    bare = [sys.executable, str(ROOT / "tune_main.py"), "--resume", "--experiment-name", "usr1",
            "--storage-path", str(tmp_path / "store"), "--no-dashboard"]
    # a flag that contradicts the stored setting is refused, naming both values, and changes nothing
    bad = subprocess.run([*bare, "--episodes", "6"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert bad.stderr.count("\n") == 1 and "train.episodes=6" in bad.stderr and "30" in bad.stderr, bad.stderr
    assert json.loads((exp / "sweep_meta.json").read_text()) == meta_before
    # the same value again is fine; so is a new placement setting
    proc = subprocess.run([*bare, "--episodes", "30", "--max-concurrent", "2"], capture_output=True, text=True,
                          timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (exp / "summary.json").exists()
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)  # the 2 x 2 grid, not 8 samples
    assert max(int(r["episodes"]) for r in rows) == 30
    meta = json.loads((exp / "sweep_meta.json").read_text())
    assert meta["base_config"] == meta_before["base_config"] and meta["sweep"]["search"] == "grid"
    assert meta["resumed"][-1]["max_concurrent"] == 2
