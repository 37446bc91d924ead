"""One run per experiment folder (issue 13, item 2): the lock file, its take-over when the holder is gone, and two
``train_single.py`` of the same name at once."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dqlray.errors import FolderInUse
from dqlray.lock import LOCK_FILE, hold_folder, read_lock
from dqlray.procs import ProcessId

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom dqlray.lock import hold_folder\nwith hold_folder(sys.argv[1], command='holder'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n")


def hold_in_subprocess(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def dead_process():
    """The identity of a process that has exited (its PID may be reused, its start time not)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    who = ProcessId.of(p.pid)
    p.wait()
    return who


def write_lock(folder, who, command="tune_main.py"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({**who.to_dict(), "command": command, "since": "2026-01-01T00:00:00"}))


def test_a_live_holder_is_refused_in_one_line_and_the_lock_goes_with_it(tmp_path):
    folder = tmp_path / "exp"
    holder = hold_in_subprocess(folder)
    try:
        with pytest.raises(FolderInUse) as e, hold_folder(folder):
            pass
        msg = str(e.value)
        assert "\n" not in msg and str(folder) in msg and f"holder (PID {holder.pid} on host " in msg, msg
        assert "use another --experiment-name" in msg
        assert read_lock(folder)["pid"] == holder.pid  # the refused run removed nothing
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait()
    # SIGTERM killed the holder without its clean-up: its lock stays, and is taken over
    notes = []
    with hold_folder(folder, out=notes.append):
        assert read_lock(folder)["pid"] == os.getpid()
    assert notes and f"took over the lock of holder (PID {holder.pid}" in notes[0]
    assert not (folder / LOCK_FILE).exists()


def test_stale_locks_are_taken_over_by_pid_and_start_time(tmp_path):
    dead = dead_process()
    me = ProcessId.of()
    reused = me._replace(start=(me.start or 0) - 1)  # our PID, but recorded for a process started earlier
    for i, who in enumerate((dead, reused)):
        folder = tmp_path / f"e{i}"
        write_lock(folder, who)
        with hold_folder(folder, out=lambda s: None):
            held = read_lock(folder)
            assert (held["pid"], held["start"], held["boot"]) == (me.pid, me.start, me.boot)
        assert not (folder / LOCK_FILE).exists()


def test_a_lock_of_another_host_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "exp"
    write_lock(folder, ProcessId("node17", 4242, 99, "x"))
    with pytest.raises(FolderInUse, match=rf"PID 4242 on host node17.*remove {folder / LOCK_FILE}$"), \
            hold_folder(folder):
        pass
    assert (folder / LOCK_FILE).exists()


def test_released_on_error_and_an_empty_new_folder_is_removed(tmp_path):
    folder = tmp_path / "new" / "exp"
    with pytest.raises(RuntimeError), hold_folder(folder):
        assert (folder / LOCK_FILE).exists()
        raise RuntimeError("boom")
    assert not folder.exists()
    folder.mkdir(parents=True)
    with hold_folder(folder):
        (folder / "result.txt").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["result.txt"]


FAST = ["--data_file", "data/test_small.csv", "--set", "env.episode_length=100", "--set", "agent.learning_starts=100",
        "--num_seeds", "1", "--no-progress"]


def test_two_train_runs_of_one_name_the_second_is_refused_and_sigterm_unlocks(tmp_path):
    args = [sys.executable, "train_single.py", "--episodes", "5000", "--experiment_name", "dupS",
            "--results_dir", str(tmp_path), *FAST]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "dupS"
    deadline = time.time() + 120
    while not (run_dir / "metrics.csv").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    assert first.poll() is None, first.communicate()
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip() == (f"dqlray: error: {run_dir} is in use by train_single.py (PID {first.pid} on "
                                     f"host {socket.gethostname()}, since {read_lock(run_dir)['since']}); wait for it "
                                     "to end or use another --experiment_name")
    first.send_signal(signal.SIGTERM)  # checkpoints, exits 75 and unlocks
    out, err = first.communicate(timeout=120)
    assert first.returncode == 75, err
    assert not (run_dir / LOCK_FILE).exists()
    resumed = subprocess.run([*args[:3], "6", *args[4:], "--resume"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 2 and "--resume with a different config (train.episodes)" in resumed.stderr
    assert not (run_dir / LOCK_FILE).exists()  # an error unlocks too
