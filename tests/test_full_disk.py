"""A full (or read-only) results filesystem (issue 13, item 3), on a small real tmpfs: one line naming the folder and
the space needed, exit 74, no temporary files, and every checkpoint and result written before left byte for byte."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMP_MARKS = (".tmp_ckpt_", ".partial", ".events.partial")


@pytest.fixture
def small_fs(tmp_path):
    """``make(kilobytes)``: a fresh tmpfs of that size, unmounted after the test. Needs root; in CI (which runs as
    root) a failure to mount fails the test instead of skipping it."""
    mounts = []

    def unavailable(reason):
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a small tmpfs in CI: {reason}", pytrace=False)
        pytest.skip(f"cannot mount a small tmpfs: {reason}")

    def make(kilobytes):
        if os.geteuid() != 0:
            unavailable("needs root (mount -t tmpfs)")
        d = tmp_path / f"fs{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k,mode=0755", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            unavailable(r.stderr.strip() or f"mount exited {r.returncode}")
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(fs, leave):
    """Take all but about ``leave`` bytes of ``fs``'s free space with a filler file (written: tmpfs allocates on
    write)."""
    st = os.statvfs(fs)
    left = max(st.f_bavail * st.f_frsize - leave, 0)
    with (fs / "filler").open("ab") as f:
        while left > 0:
            n = min(left, 1 << 20)
            f.write(b"\0" * n)
            left -= n


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder):
    return [str(p) for p in folder.rglob("*") if any(m in p.name for m in TEMP_MARKS) or p.name.startswith(".tmp")]


def one_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


FAST = ["--data_file", "data/test_small.csv", "--set", "env.episode_length=100", "--set", "agent.learning_starts=100",
        "--num_seeds", "2", "--no-progress", "--checkpoint_every", "1"]


@pytest.mark.slow
def test_train_run_on_a_full_disk_stops_in_one_line_and_keeps_what_it_saved(small_fs):
    fs = small_fs(4096)
    run_dir = fs / "full"
    args = [sys.executable, "train_single.py", "--episodes", "30", "--experiment_name", "full", "--results_dir",
            str(fs), *FAST]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(run_dir.glob("checkpoints/ckpt_*/state.pt")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGSTOP)  # hold the run still while the disk fills up
    time.sleep(0.5)
    fill(fs, 16 * 1024)
    kept = {k: v for k, v in snapshot(run_dir).items() if not any(m in k for m in TEMP_MARKS)}
    p.send_signal(signal.SIGCONT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 74, out[-2000:] + err[-3000:]
    line = one_line(subprocess.CompletedProcess(args, 74, out, err))
    assert line.startswith(f"dqlray: error: {run_dir / 'checkpoints'}: no space left on device writing the "
                           "checkpoint of episode "), line
    assert "(needs about " in line and line.endswith("; once there is room, continue with --resume")
    assert temp_files(run_dir) == []
    after = snapshot(run_dir)
    for name, digest in kept.items():  # every checkpoint and the header as they were; metrics.csv may have grown
        if name not in ("metrics.csv", "dqlray.lock"):
            assert after.get(name) == digest, name
    newest = sorted(run_dir.glob("checkpoints/ckpt_*"))[-1]
    assert torch.load(newest / "state.pt", weights_only=False)["episode"] == int(newest.name[5:])
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["episodes"]) for r in rows] == list(range(1, int(newest.name[5:]) + 1))

    # room again: the run continues from its last checkpoint to the end
    (fs / "filler").unlink()
    done = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [int(r["episodes"]) for r in csv.DictReader((run_dir / "metrics.csv").open())] == list(range(1, 31))

    # --resume of the finished run on a full disk: one line, and not one byte of the results changes
    before = snapshot(run_dir)
    fill(fs, 12 * 1024)
    again = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 74, again.stderr[-3000:]
    line = one_line(again)
    assert line.startswith(f"dqlray: error: {run_dir}: no space left on device writing ") and "(needs about " in line
    assert snapshot(run_dir) == before and temp_files(run_dir) == []

    # a read-only filesystem: one line too
    (fs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    ro = subprocess.run([*args, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ro.returncode == 74 and one_line(ro) == (f"dqlray: error: {run_dir}: read-only file system writing "
                                                    "dqlray.lock; files written before are intact")
    assert snapshot(run_dir) == before


SWEEP = {
    "data": {"data_file": str(ROOT / "data" / "test_small.csv")},
    "env": {"episode_length": 60},
    "agent": {"learning_starts": 50, "buffer_size": 2000},
    "train": {"episodes": 6, "num_seeds": 1, "checkpoint_every": 2},
    "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}},
    "sweep": {"search": "random", "num_samples": 4, "grace_period": 6, "seed": 3},
}


def sweep_reserve(cfg_path):
    """What the driver keeps free on its storage for this sweep file (4 trials, one at a time)."""
    from dqlray.data import load_ohlcv
    from dqlray.parts import build_market
    from dqlray.trainer import checkpoint_bytes
    from dqlray.tuning.room import SweepRoom
    from dqlray.tuning.space import parse_sweep_file

    base = parse_sweep_file(str(cfg_path)).base
    return SweepRoom.estimate(checkpoint_bytes(base, build_market(base, load_ohlcv(base.data.data_file))), 4, 1).reserve


def statuses(exp):
    files = sorted(exp.glob("experiment_state-*.json"))
    try:
        state = json.loads(files[-1].read_text()) if files else {}
    except json.JSONDecodeError:
        return []
    return [json.loads(t[0])["status"] for t in state.get("trial_data", [])]


@pytest.mark.slow
def test_sweep_stops_resumable_before_the_disk_is_full_and_refuses_to_start_on_one(small_fs, tmp_path):
    fs = small_fs(8192)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(SWEEP))
    exp = fs / "s"
    base = [sys.executable, str(ROOT / "tune_main.py"), "--storage-path", str(fs), "--no-dashboard"]
    # one configuration per trial (--pack 1): the disk fills between two trials
    cmd = [*base, "--config", str(cfg), "--pack", "1", "--experiment-name", "s", "--max-concurrent", "1"]
    reserve = sweep_reserve(cfg)
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while statuses(exp).count("TERMINATED") < 1 and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()[1][-3000:]
    fill(fs, reserve - 128 * 1024)  # less than the sweep keeps free, more than the next checkpoints take
    out, err = p.communicate(timeout=300)
    assert p.returncode == 74, out[-3000:] + err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"tune_main.py: error: {exp}: too little free space for the next checkpoints (needs "
                           "about "), line
    assert line.endswith(f"free some space, then resume with: python tune_main.py --resume --experiment-name s "
                         f"--storage-path {fs}"), line
    assert temp_files(exp) == []
    for ckpt in exp.glob("trial_*/checkpoint_*"):  # no checkpoint was cut short
        torch.load(ckpt / "state.pt", weights_only=False)

    (fs / "filler").unlink()
    done = subprocess.run([*base, "--resume", "--experiment-name", "s"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows) and (exp / "summary.json").exists()

    # a finished sweep resumed on a full disk, and a new one there: one line each, nothing touched
    before = snapshot(exp)
    fill(fs, 96 * 1024)
    again = subprocess.run([*base, "--resume", "--experiment-name", "s"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 74
    assert one_line(again).startswith(f"tune_main.py: error: {exp}: too little free space for the sweep's "
                                      "checkpoints and state (needs about ")
    assert snapshot(exp) == before and temp_files(exp) == []
    new = subprocess.run([*cmd[:-4], "--experiment-name", "t"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert new.returncode == 74 and f"{fs / 't'}: too little free space for the sweep's" in one_line(new)
    assert not (fs / "t").exists()
