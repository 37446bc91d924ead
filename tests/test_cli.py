"""The single-run command line: run folder contents, one-line errors, stop with SIGUSR1 and --resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--data_file", "data/test_small.csv", "--set", "env.episode_length=100", "--set", "agent.learning_starts=100",
        "--num_seeds", "2", "--no-progress"]


def run(args, cwd=ROOT, **kw):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def test_train_single_writes_a_reproducible_run_folder(tmp_path):
    proc = run(["train_single.py", "--agent_type", "custom", "--episodes", "3", "--experiment_name", "hp_lr0.001_g0.99",
                "--learning_rate", "0.001", "--gamma", "0.99", "--target_update_freq", "10",
                "--results_dir", str(tmp_path), *FAST])
    assert proc.returncode == 0, proc.stderr
    assert "Final Metrics" in proc.stdout and "buy_and_hold" in proc.stdout
    rd = tmp_path / "hp_lr0.001_g0.99"
    cfg = yaml.safe_load((rd / "config.yaml").read_text())
    assert cfg["agent"]["agent_type"] == "double_dueling" and cfg["agent"]["learning_rate"] == 0.001
    assert cfg["agent"]["gamma"] == 0.99 and cfg["agent"]["target_update_freq"] == 10
    meta = json.loads((rd / "meta.json").read_text())
    assert meta["seeds"] == [0, 1] and len(meta["data_hash"]) == 16 and meta["git_commit"]
    assert meta["versions"]["torch"].startswith("2.13")
    rows = list(csv.DictReader((rd / "metrics.csv").open()))
    assert [int(r["episodes"]) for r in rows] == [1, 2, 3]
    ev = json.loads((rd / "eval.json").read_text())
    assert ev["part"] == "test" and len(ev["agent"]["per_seed"]) == 2 and "momentum" in ev["baselines"]
    assert "linear_probe" in ev["baselines"] and "linear_probe" in proc.stdout  # issue 12: a baseline everywhere
    header = (rd / "equity_test.csv").read_text().splitlines()[0]
    assert header.startswith("date,agent_seed0,agent_seed1,agent_mean,buy_and_hold")
    again = run(["train_single.py", "--episodes", "3", "--experiment_name", "hp_lr0.001_g0.99",
                 "--results_dir", str(tmp_path), *FAST])
    assert again.returncode == 2 and "already holds a run; use --resume" in again.stderr
    ev2 = run(["-m", "dqlray", "evaluate", str(rd)])
    assert ev2.returncode == 0 and "agent (mean" in ev2.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, needle in ([["--agent_type", "ppo"], "agent.agent_type='ppo' is not allowed"],
                         [["--episodes", "x"], "argument --episodes: invalid int value: 'x'"],
                         [["--data_file", "missing.csv"], "missing.csv: no such file"],
                         [["--set", "agent.bogus=1"], "unknown key agent.bogus; allowed: agent_type"],
                         [["--config", "nope.yaml"], "nope.yaml: no such config file"],
                         *([[["--device", "cuda"], "train.device='cuda' but no CUDA device is available"]]
                           if not torch.cuda.is_available() else []),
                         [["--set", "env.episode_length=100000"], "env.episode_length=100000 is longer than the"]):
        proc = run(["train_single.py", "--results_dir", str(tmp_path), *args])
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert needle in proc.stderr


def test_sigusr1_checkpoints_and_resume_completes(tmp_path):
    args = ["train_single.py", "--episodes", "40", "--experiment_name", "long", "--results_dir", str(tmp_path), *FAST]
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "long" / "metrics.csv"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline:
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGUSR1)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 75, err
    assert "resume with --resume" in out
    done = len(list(csv.DictReader(metrics.open())))
    assert 1 <= done < 40
    proc = run(args + ["--resume"])
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(metrics.open()))
    assert [int(r["episodes"]) for r in rows] == list(range(1, 41))


def test_a_diverging_run_stops_with_one_line_naming_the_episode(tmp_path):
    # 1e30 is a finite learning rate, so the config accepts it; the loss becomes non-finite in the first episode
    # and the run must stop there instead of printing agent metrics as if nothing happened (issue 13, item 7).
    proc = run(["train_single.py", "--episodes", "3", "--experiment_name", "boom", "--learning_rate", "1e30",
                "--results_dir", str(tmp_path), *FAST])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged at episode 2" in lines[0] and "agent.learning_rate=1e+30" in lines[0], lines
    assert "Final Metrics" not in proc.stdout
    assert not (tmp_path / "boom" / "eval.json").exists()
