"""The local Ray of a sweep (issue 13, items 6, 8, 10): a private token made before Ray starts, loopback-only
servers, the orphans of a SIGKILLed driver stopped by the next sweep (and nothing else), and a trial too big for
any node refused up front."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dqlray.procs import ProcessId, tagged_processes
from dqlray.tuning.local_ray import TAG_VAR, local_token, reap_orphans

ROOT = Path(__file__).resolve().parents[1]
SLEEP = "import sys, time\nopen(sys.argv[1], 'w') if len(sys.argv) > 1 else None\ntime.sleep(300)\n"
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n" \
           "time.sleep(300)\n"


def alive(pid):
    try:
        return ProcessId.of(pid).alive()
    except OSError:
        return False


def spawn(code, *args, tag=None, stdout=None):
    env = {k: v for k, v in os.environ.items() if k != TAG_VAR}
    if tag:
        env[TAG_VAR] = tag
    # start_new_session: a process of its own, like Ray's agents once their parent is gone
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=stdout, text=True,
                            start_new_session=True)


def record(directory, tag, driver, temp_dir):
    sessions = directory / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    (sessions / f"{tag}.json").write_text(json.dumps({"tag": tag, "driver": driver.to_dict(),
                                                      "temp_dir": str(temp_dir), "experiment": "x"}))


def test_local_token_is_private_from_the_start(tmp_path):
    d = tmp_path / "state" / "ray"
    token = local_token(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    first = token.read_text()
    token.chmod(0o644)
    d.chmod(0o755)
    assert local_token(d).read_text() == first  # kept (a browser's dashboard cookie stays valid), tightened
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and stat.S_IMODE(token.stat().st_mode) == 0o600


def test_reaper_stops_a_dead_drivers_processes_only(tmp_path):
    state = tmp_path / "state"
    dead_driver = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = ProcessId.of(dead_driver.pid)
    dead_driver.wait()
    tmp_dead, tmp_live = tmp_path / "ray-dead", tmp_path / "ray-live"
    tmp_dead.mkdir()
    tmp_live.mkdir()
    record(state, "t-dead", dead, tmp_dead)
    record(state, "t-live", ProcessId.of(), tmp_live)  # this test process: a live driver
    tagged = spawn(SLEEP, tag="t-dead")
    stubborn = spawn(STUBBORN, tag="t-dead", stdout=subprocess.PIPE)
    assert stubborn.stdout.readline().strip() == "ready"
    log_only = spawn(SLEEP, str(tmp_dead / "agent.log"))  # no tag (an agent overwrote its environment), a log open
    live_one = spawn(SLEEP, tag="t-live")
    unrelated = spawn(SLEEP, str(tmp_path / "elsewhere.log"))
    procs = [tagged, stubborn, log_only, live_one, unrelated]
    try:
        deadline = time.time() + 30
        while not (tmp_dead / "agent.log").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert set(tagged_processes(TAG_VAR, "t-dead", path=str(tmp_dead))) == {tagged.pid, stubborn.pid, log_only.pid}
        notes = []
        assert reap_orphans(state, notes.append) == 3
        for p in (tagged, stubborn, log_only):
            p.wait(timeout=10)  # reaped by us, their parent
        assert alive(live_one.pid) and alive(unrelated.pid)
        assert len(notes) == 1 and f"Stopped 3 Ray process(es) left behind by the sweep driver PID {dead.pid}" in notes[0]
        assert not (state / "sessions" / "t-dead.json").exists() and (state / "sessions" / "t-live.json").exists()
    finally:
        for p in procs:
            p.kill()
            p.wait()



SWEEP = {
    "data": {"data_file": str(ROOT / "data" / "test_small.csv")},
    "env": {"episode_length": 60},
    "agent": {"learning_starts": 50, "buffer_size": 2000},
    "train": {"episodes": 5000, "num_seeds": 1, "checkpoint_every": 2},  # runs until the test stops it
    "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}},
    "sweep": {"search": "random", "num_samples": 2, "seed": 3},
}
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::ffff:127\.\d+\.\d+\.\d+\]|\[::1\]):\d+$")


def sweep_env(tmp_path):
    """An environment with a home of its own (the token and session records land there, Ray's ~/.ray would too) and
    no Ray or notification settings of the caller's; and the sweep file."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "XDG_STATE_HOME", TAG_VAR, "TELEGRAM_", "DQLRAY_NOTIFY"))}
    env["HOME"] = str(home)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(SWEEP))
    return env, cfg


def listening(pids):
    """Local addresses on which ``pids`` accept TCP connections (from ``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(m) for m in re.findall(r"pid=(\d+)", line)}
        if owners & set(pids):
            found.append(line.split()[3])
    return found


def descendants(root):
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parents[int(name)] = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, changed = {root}, True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return found


@pytest.mark.slow
def test_local_ray_is_private_and_a_killed_drivers_orphans_are_stopped_by_the_next_sweep(tmp_path):
    env, cfg = sweep_env(tmp_path)
    home, other_home = Path(env["HOME"]), tmp_path / "other"
    other_home.mkdir()
    exp = tmp_path / "store" / "orph"
    cmd = [sys.executable, str(ROOT / "tune_main.py"), "--config", str(cfg), "--experiment-name", "orph",
           "--storage-path", str(tmp_path / "store"), "--max-concurrent", "1"]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    other = None
    try:
        deadline = time.time() + 300
        while not list(exp.glob("trial_*/result.json")) and time.time() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        state = home / ".local" / "state" / "dqlray" / "ray"
        rec = json.loads(next((state / "sessions").glob("*.json")).read_text())
        assert rec["driver"]["pid"] == driver.pid

        def own_ray():
            return tagged_processes(TAG_VAR, rec["tag"], path=rec["temp_dir"])

        ray_procs = own_ray()
        # item 6: the token was made by dqlray, private, before Ray started; Ray never wrote ~/.ray
        token = state / "auth_token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(state.stat().st_mode) == 0o700
        assert not (home / ".ray").exists()
        raylet = [pid for pid, c in ray_procs.items() if c.split(" ")[0].endswith("/raylet")]
        assert len(raylet) == 1, ray_procs
        raylet_env = Path(f"/proc/{raylet[0]}/environ").read_bytes().split(b"\0")
        assert f"RAY_AUTH_TOKEN_PATH={token}".encode() in raylet_env and b"RAY_AUTH_MODE=token" in raylet_env
        # item 6: every server of the local Ray listens on loopback only
        addrs = listening(ray_procs)
        assert len(addrs) >= 4 and all(LOOPBACK.match(a) for a in addrs), addrs
        # item 2: a second sweep of the same name is refused while the first runs
        second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
        assert second.stderr.count("\n") == 1 and f"{exp} is in use by tune_main.py (PID {driver.pid} on" in second.stderr
        # an unrelated Ray on this host, which must survive the clean-up
        ready = tmp_path / "other-ready"
        other = subprocess.Popen([sys.executable, "-c", "import ray, sys, time\nray.init(num_cpus=1, "
                                  "include_dashboard=False)\nopen(sys.argv[1], 'w').close()\ntime.sleep(600)\n",
                                  str(ready)], env={**env, "HOME": str(other_home)}, cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert ready.exists()
        other_procs = descendants(other.pid)
        assert len(other_procs) >= 3
        # item 10: a crash kills the driver only; the agents outlive it
        assert driver.poll() is None
        driver.kill()
        driver.wait()
        time.sleep(5)
        orphans = own_ray()
        assert any("DashboardAgent" in c or "RuntimeEnvAgent" in c for c in orphans.values()), orphans
        # the next command, a resume asking for more CPUs per trial than the node has (item 8), stops them first
        want = 4 * (os.cpu_count() or 1)
        nxt = subprocess.run([*cmd, "--resume", "--cpus-per-trial", str(want)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert nxt.returncode == 2, nxt.stdout[-3000:] + nxt.stderr[-3000:]
        assert re.fullmatch(rf"tune_main.py: error: --cpus-per-trial {want} but the Ray cluster has \d+ CPUs; the "
                            r"trials would wait forever\n", nxt.stderr), nxt.stderr
        assert f"took over the lock of tune_main.py (PID {driver.pid}" in nxt.stdout
        assert f"Ray process(es) left behind by the sweep driver PID {driver.pid}" in nxt.stdout
        assert own_ray() == {}
        assert all(alive(pid) for pid in other_procs), [p for p in other_procs if not alive(p)]
        assert not list((state / "sessions").glob("*.json")) and not (exp / "dqlray.lock").exists()
        assert stat.S_IMODE(Path(rec["temp_dir"]).stat().st_mode) == 0o700  # the crashed Ray's logs: private, kept
    finally:
        log.close()
        if driver.poll() is None:
            driver.kill()
        if "rec" in locals():
            shutil.rmtree(rec["temp_dir"], ignore_errors=True)
        if other is not None:
            for pid in sorted(descendants(other.pid), reverse=True):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            other.wait()


@pytest.mark.slow
def test_sigterm_stops_a_sweep_with_its_state_saved_its_folder_unlocked_and_its_ray_gone(tmp_path):
    env, cfg = sweep_env(tmp_path)
    home = Path(env["HOME"])
    exp = tmp_path / "store" / "term"
    p = subprocess.Popen([sys.executable, str(ROOT / "tune_main.py"), "--config", str(cfg), "--experiment-name", "term",
                          "--storage-path", str(tmp_path / "store"), "--no-dashboard", "--max-concurrent", "1"],
                         env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(exp.glob("trial_*/result.json")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    sessions = home / ".local" / "state" / "dqlray" / "ray" / "sessions"
    rec = json.loads(next(sessions.glob("*.json")).read_text())
    p.terminate()  # SIGTERM, as `kill` or a scheduler sends it; Ray's own handler would abort the driver (134)
    out, _ = p.communicate(timeout=180)
    assert p.returncode == 75, out[-3000:]
    assert "state saved. Resume with: python tune_main.py --resume --experiment-name term" in out
    assert not (exp / "dqlray.lock").exists() and not list(sessions.glob("*.json"))
    assert tagged_processes(TAG_VAR, rec["tag"], path=rec["temp_dir"]) == {}
    assert not Path(rec["temp_dir"]).exists()
