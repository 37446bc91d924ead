"""What a broken Telegram costs a run and a sweep at exit (issue 13 item 4).

    python -m bench.notify_exit [--repeats 3] [--sweep-repeats 1] [--no-sweep] [--no-run] [--modes off,hanging]

Runs ``train_single.py`` (and a small ``tune_main.py`` sweep) as a user would, interleaved, with notifications off
and against the loopback fake Bot API (``tests/fake_telegram.py``) in four states: answering, unreachable (a closed
port), hanging (accepts, never answers) and a 429 backlog (every call answered "retry after 60 s"). Prints the median
wall time and the median end (from the run's last output line, or from the sweep's last trial status table, to the
exit: where every flush happens; far less noisy than the wall time on a shared machine), each against no
notifications, and the one stderr line that announces what was spooled. Goal (issue 13 item 4): an unreachable or
hanging API ends a run or a sweep at most 2 s later than no notifications.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fake_telegram import FakeTelegram, closed_port, make_fake_token  # noqa: E402 - the loopback Bot API

CHAT = "4242"
MODES = ("off", "ok", "unreachable", "hanging", "429")
TRAIN = ["--data_file", str(ROOT / "data" / "test_small.csv"), "--episodes", "6", "--num_seeds", "2", "--no-progress",
         "--set", "env.episode_length=150", "--set", "agent.learning_starts=100", "--set", "train.checkpoint_every=3"]
SWEEP = {"data": {"data_file": str(ROOT / "data" / "test_small.csv")}, "env": {"episode_length": 60},
         "agent": {"learning_starts": 50, "buffer_size": 2000}, "train": {"episodes": 3, "num_seeds": 1},
         "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}},
         "sweep": {"search": "random", "num_samples": 2, "grace_period": 1, "reduction_factor": 2, "seed": 3}}


def run(cmd: list[str], env: dict[str, str], cwd: Path, marker: str | None) -> tuple[float, float, str]:
    """Wall time; the time from the last output line starting with ``marker`` (the last line when None) to the end,
    which holds every flush; and the spool line."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True)
        since, out = t0, []
        for line in proc.stdout or []:
            out.append(line)
            if marker is None or line.startswith(marker):
                since = time.perf_counter()
        proc.wait(timeout=900)
        end = time.perf_counter()
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        sys.exit(f"{cmd[1]} failed ({proc.returncode}):\n{''.join(out)[-2000:]}\n{stderr[-2000:]}")
    said = [line for line in stderr.splitlines() if line.startswith("dqlray notify:")]
    return end - t0, end - since, said[0] if said else ""


def env_for(mode: str, tg: FakeTelegram, work: Path, i: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "DQLRAY_"))}
    env.update(HOME=str(work), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    if mode != "off":
        api = f"http://127.0.0.1:{closed_port()}" if mode == "unreachable" else tg.url
        env.update(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_CHAT_ID=CHAT, DQLRAY_TELEGRAM_API_BASE=api,
                   DQLRAY_NOTIFY_SPOOL=str(work / f"spool-{mode}-{i}"))
    return env


def set_mode(tg: FakeTelegram, mode: str) -> None:
    tg.release()
    with tg._lock:
        tg._forced_429.clear()
    if mode == "hanging":
        tg.hang()
    elif mode == "429":
        tg.force_429(100_000, retry_after=60)


def measure(kind: str, repeats: int, tg: FakeTelegram, work: Path, modes: list[str]) -> None:
    walls: dict[str, list[float]] = {m: [] for m in modes}
    exits: dict[str, list[float]] = {m: [] for m in modes}
    said: dict[str, str] = {}
    sweep_file = work / "sweep.yaml"
    sweep_file.write_text(json.dumps(SWEEP))
    for i in range(repeats):
        for mode in modes:  # interleaved: machine load drifts
            set_mode(tg, mode)
            name = f"{kind}_{mode}_{i}"
            if kind == "run":
                cmd = [sys.executable, str(ROOT / "train_single.py"), "--experiment_name", name,
                       "--results_dir", str(work / "results"), *TRAIN]
            else:
                cmd = [sys.executable, str(ROOT / "tune_main.py"), "--config", str(sweep_file), "--experiment-name",
                       name, "--storage-path", str(work / "store"), "--no-dashboard"]
            # A run's flush follows its last output line; a sweep's first one ends Tuner.fit, whose last output is
            # Tune's "Trial status:" table.
            wall, exit_s, line = run(cmd, env_for(mode, tg, work, i), work, None if kind == "run" else "Trial status:")
            walls[mode].append(wall)
            exits[mode].append(exit_s)
            said[mode] = line or said.get(mode, "")
            print(f"  {kind} {mode:<12} wall {wall:7.1f} s   end {exit_s:6.2f} s", flush=True)
    base, base_exit = statistics.median(walls["off"]), statistics.median(exits["off"])
    end = "after its last output line" if kind == "run" else "after the trials (Tune's last status table)"
    print(f"\n{kind}: medians over {repeats} of the wall time and of the end ({end}: every flush happens there), "
          "each with its difference to no notifications")
    for mode in modes:
        med, ex = statistics.median(walls[mode]), statistics.median(exits[mode])
        print(f"  {mode:<12} wall {med:7.1f} s {med - base:+6.1f} s   end {ex:6.2f} s {ex - base_exit:+6.2f} s   "
              f"{said.get(mode, '')[:60]}")
    for mode in [m for m in ("unreachable", "hanging") if m in modes]:
        extra = statistics.median(exits[mode]) - base_exit
        print(f"  goal: {mode} ends <= 2 s later: {'met' if extra <= 2.0 else 'NOT met'} (end {extra:+.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep-repeats", type=int, default=1)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-run", action="store_true")
    ap.add_argument("--modes", default=",".join(MODES), help=f"some of {','.join(MODES)} (off is always run)")
    args = ap.parse_args()
    modes = ["off", *(m for m in args.modes.split(",") if m in MODES and m != "off")]
    work = Path(tempfile.mkdtemp(prefix="dqlray-bench-notify-"))
    print(f"cores: {os.cpu_count()}, work folder: {work}")
    with FakeTelegram(make_fake_token(), chats=[CHAT]) as tg:
        if not args.no_run:
            measure("run", args.repeats, tg, work, modes)
        if not args.no_sweep:
            measure("sweep", args.sweep_repeats, tg, work, modes)
        tg.release()


if __name__ == "__main__":
    main()
