"""The SLURM scripts in cluster/ (issue 8), on a real two-node SLURM started by
cluster/dev/local_slurm.sh (tests/slurm_fixture.py; root, about 4 minutes on 2 cores).

The first tests check pieces of the scripts without SLURM. The others (marked ``slurm``) submit
cluster/slurm_ray_head.sh with sbatch, as a user would, and check the job log, the Tune results
and the processes left: the end-to-end test runs tune_main.py itself; the others run
tests/slurm_driver_stub.py (DQLRAY_DRIVER), whose trials are seconds long and log their starts.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

try:  # pytest puts tests/ on sys.path (rootdir-relative "prepend" import mode)
    from slurm_fixture import REPO, slurm  # noqa: F401
except ImportError:  # pragma: no cover - tests/ as a package
    from tests.slurm_fixture import REPO, slurm  # noqa: F401

HEAD = REPO / "cluster" / "slurm_ray_head.sh"
SINGLE = REPO / "cluster" / "slurm_single.sh"
COMMON = REPO / "cluster" / "common.sh"
STUB = REPO / "tests" / "slurm_driver_stub.py"
NODE_ADDR = {"dqn1": "10.77.0.11", "dqn2": "10.77.0.12"}
SMALL_JOB = ("--nodes=2", "--cpus-per-task=1", "--mem=1G", "--time=15")


def SLURM(test):  # noqa: N802 - reads as a marker
    """Marks a test that needs the local SLURM cluster; each takes about a minute on 2 cores."""
    return pytest.mark.slow(pytest.mark.slurm(test))

_spec = importlib.util.spec_from_file_location("ray_cluster", REPO / "cluster" / "ray_cluster.py")
ray_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ray_cluster)


def _bash(script: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_"))}
    full_env.update(env, DQLRAY_ROOT=str(REPO))
    return subprocess.run(
        ["bash", "-c", f'source "{COMMON}"; {script}'], env=full_env, capture_output=True, text=True
    )


def _job_processes(job: str) -> dict[int, str]:
    """Every process of the job's Ray on either node: tagged in its environment, or naming the
    job's temp dir in its command line, or a descendant of such a process."""
    found = {}
    for node in NODE_ADDR:
        found.update(ray_cluster.job_processes(f"dqlray-{job}-{node}", f"/tmp/dqlray-{job}-{node}"))
    return found


def _read_log(tmp_path: Path, job: str) -> str:
    return (tmp_path / f"{job}.out").read_text(errors="replace")


def _resource_table(log: str) -> list[tuple[str, ...]]:
    return re.findall(r"^\s+(dqn\d)\s+(\S+)\s+(head|worker)\s+(\d+)\s+(\d+)\s*$", log, re.M)


def _trial_results(exp_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for result in exp_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def _listening_ports() -> list[tuple[str, int, str]]:
    """(node, port, process name) of every TCP/UDP socket listening in the two nodes' namespaces."""
    found = []
    for node in NODE_ADDR:
        out = subprocess.run(
            ["nsenter", f"--net=/run/netns/{node}", "ss", "-Hltunp"], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            port = int(line.split()[4].rsplit(":", 1)[1])
            name = re.search(r'\(\("([^"]+)"', line)
            found.append((node, port, name.group(1) if name else "?"))
    return found


def _assert_clean(job: str, log: str) -> None:
    left = _job_processes(job)
    assert not left, f"Ray processes of job {job} left behind: {left}"
    for node in NODE_ADDR:
        assert not Path(f"/tmp/dqlray-{job}-{node}").exists()
    token = re.search(r"dashboard token: in (\S+)", log)
    assert token, "the job log does not say where the dashboard token is"
    assert not Path(token.group(1)).exists(), "the job's token file outlived the job"
    assert not re.search(r"\b[0-9a-f]{64}\b", log), "a Ray token was printed to the job log"


# ------------------------------------------------------------------ pieces, no SLURM needed
def test_port_probe_moves_past_a_busy_block():
    first = next(f for f in range(24000, 32000, 100) if all(ray_cluster._port_free(p) for p in range(f, f + 30)))
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("", first + 2))
        busy.listen()
        out = subprocess.run(
            ["python", str(REPO / "cluster" / "ray_cluster.py"), "ports", "--first", str(first),
             "--size", "10", "--slots", "3", "--start-slot", "0"],
            capture_output=True, text=True, check=True,
        ).stdout
    assert int(out) == first + 10


def test_temp_dir_too_long_for_ray_sockets_fails_up_front():
    ok = _bash("dqlray_tmpdir", SLURM_JOB_ID="123456", SLURMD_NODENAME="n1")
    assert ok.returncode == 0 and ok.stdout.strip() == "/tmp/dqlray-123456-n1"
    long = _bash("dqlray_tmpdir", SLURM_JOB_ID="123456", SLURMD_NODENAME="n1", DQLRAY_TMPDIR="/scratch/" + "x" * 40)
    assert long.returncode == 1
    assert "socket paths would be" in long.stderr and "limit 107" in long.stderr


@pytest.mark.parametrize(
    ("env", "gpus"),
    [
        ({"SLURM_GPUS_ON_NODE": "4", "CUDA_VISIBLE_DEVICES": "0"}, "4"),
        ({"SLURM_TRES_PER_TASK": "cpu=8,gres/gpu:a100:2"}, "2"),
        ({"SLURM_TRES_PER_TASK": "gres/gpu:3"}, "3"),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "2"),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "0"),
        ({}, "0"),
    ],
)
def test_gpu_count_from_slurm_variables(env, gpus):
    assert _bash("dqlray_gpus", **env).stdout.strip() == gpus


# ------------------------------------------------------------------ on the local SLURM
@SLURM
def test_sweep_runs_on_both_nodes_and_leaves_nothing(slurm, tmp_path):
    """The real driver, tune_main.py, with a small packed sweep on the bundled data (issue 14).

    Four configurations in two packs of two, one pack per node. tune_main.py reuses actors, so a
    pack must outlast the skew between the two nodes' first actor start-ups (about 5 s here, 15 s and
    more on a loaded machine) or the faster node's actor takes every pack: 150 episodes (about 30 s) for
    the configurations that ASHA cannot stop, the first ones at each rung.
    """
    storage = tmp_path / "results"
    job = slurm.sbatch(
        *SMALL_JOB, f"--output={tmp_path}/%j.out", str(HEAD),
        "--storage-path", str(storage), "--experiment-name", "e2e",
        "--num-samples", "4", "--pack", "2", "--episodes", "150", "--num-seeds", "1",
    )
    # While trials run: every port the job's Ray listens on is in its per-node block.
    deadline = time.monotonic() + 180
    while not list((storage / "e2e").glob("*/result.json")):
        assert time.monotonic() < deadline and slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), (
            _read_log(tmp_path, job)[-4000:]
        )
        time.sleep(0.5)
    listening = _listening_ports()
    blocks = dict(re.findall(r"dqlray\[(dqn\d)\]: starting Ray \w+ at \S+, ports (\d+)-", _read_log(tmp_path, job)))
    stray = [
        (node, port, name) for node, port, name in listening
        if name not in ("slurmd", "slurmstepd", "srun") and not 0 <= port - int(blocks[node]) < 200
    ]
    assert not stray, f"Ray listening outside the job's port blocks {blocks}: {stray}"
    assert {port for node, port, _ in listening if node == "dqn1"} >= {int(blocks["dqn1"]) + i for i in range(11)}

    info = slurm.wait(job, timeout=300)
    log = _read_log(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]

    table = _resource_table(log)
    assert ("dqn1", NODE_ADDR["dqn1"], "head", "1", "0") in table, log
    assert ("dqn2", NODE_ADDR["dqn2"], "worker", "1", "0") in table, log
    assert re.search(r"ssh -N -L 8265:10\.77\.0\.11:\d+ \S+", log), "no ssh tunnel line"

    results = _trial_results(storage / "e2e")
    assert len(results) == 2, sorted(results)
    assert {rows[-1]["node_ip"] for rows in results.values()} == set(NODE_ADDR.values())
    assert all(rows[0]["configs"] == 2 for rows in results.values())  # each trial trained a pack of two
    configs = list(csv.DictReader((storage / "e2e" / "trials.csv").open()))
    assert len(configs) == 4 and len({r["pack_id"] for r in configs}) == 2
    assert {r["node_ip"] for r in configs} == set(NODE_ADDR.values())  # each configuration's record says where
    assert (storage / "e2e" / "summary.json").exists()
    _assert_clean(job, log)


@SLURM
def test_walk_forward_sweep_in_one_job_and_as_an_array(slurm, tmp_path):
    """`--walk-forward 3` (issue 11): the folds one after another in one job, and as a SLURM array (one fold per
    task) whose final `--resume` job stitches them; no fold runs twice."""
    storage = tmp_path / "results"
    small = ("--num-samples", "2", "--episodes", "4", "--num-seeds", "1", "--walk-forward", "3")
    one = slurm.sbatch(*SMALL_JOB, f"--output={tmp_path}/%j.out", str(HEAD), "--storage-path", str(storage),
                       "--experiment-name", "wf1", *small)
    array = slurm.sbatch(*SMALL_JOB, "--array=0-2", f"--output={tmp_path}/%A_%a.out", str(HEAD),
                         "--storage-path", str(storage), "--experiment-name", "wfa", *small)
    info = slurm.wait(one, timeout=600)
    log = _read_log(tmp_path, one)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    s = json.loads((storage / "wf1" / "summary.json").read_text())
    assert s["kind"] == "walk_forward" and len(s["folds"]) == 3 and s["verdict"]["folds"] == 3
    assert "Verdict: The walk-forward agent (3 folds, each tuned on its own past)" in log
    _assert_clean(one, log)
    for task in range(3):
        info = slurm.wait(f"{array}_{task}", timeout=600)
        log = (tmp_path / f"{array}_{task}.out").read_text(errors="replace")
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
        assert f"--fold {task}" in log and f"Fold {task} of 3" in log
        assert sum(f"Fold {i} of 3" in log for i in range(3)) == 1  # its own fold only
    exp = storage / "wfa"
    assert all((exp / f"fold_{i}" / "summary.json").exists() for i in range(3))
    assert not (exp / "summary.json").exists()
    trials = {f: len(_trial_results(exp / f"fold_{f}")) for f in range(3)}
    final = slurm.sbatch(*SMALL_JOB, f"--output={tmp_path}/%j.out", str(HEAD), "--storage-path", str(storage),
                         "--experiment-name", "wfa", "--resume")
    info = slurm.wait(final, timeout=300)
    log = _read_log(tmp_path, final)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert all(f"Fold {i}: finished before, not run again" in log for i in range(3))
    assert {f: len(_trial_results(exp / f"fold_{f}")) for f in range(3)} == trials
    s = json.loads((exp / "summary.json").read_text())
    assert [f["fold"] for f in s["folds"]] == [0, 1, 2] and s["tuned"]
    _assert_clean(final, log)


@SLURM
def test_two_jobs_at_once_on_the_same_nodes(slurm, tmp_path):
    jobs = [
        slurm.sbatch(
            *SMALL_JOB, f"--output={tmp_path}/%j.out", str(HEAD),
            "--storage-path", str(tmp_path / "results"), "--experiment-name", f"twin{i}",
            "--num-samples", "2", "--iters", "4", "--sleep", "0.5",
            env={"DQLRAY_DRIVER": str(STUB)},
        )
        for i in range(2)
    ]
    infos = [slurm.wait(job, timeout=300) for job in jobs]
    logs = [_read_log(tmp_path, job) for job in jobs]
    for info, log in zip(infos, logs, strict=True):
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    first_end = min(info["EndTime"] for info in infos)
    assert max(info["StartTime"] for info in infos) < first_end, "the two jobs did not run at once"
    ports = [re.search(r"starting Ray head at \S+, ports (\d+)-(\d+)", log).groups() for log in logs]
    assert ports[0] != ports[1]
    for i, job in enumerate(jobs):
        assert len(_trial_results(tmp_path / "results" / f"twin{i}")) == 2
        _assert_clean(job, logs[i])


@SLURM
def test_time_limit_signal_resubmits_and_resumes(slurm, tmp_path):
    storage, name = tmp_path / "results", "limited"
    exp_dir = storage / name
    job = slurm.sbatch(
        *SMALL_JOB, f"--output={tmp_path}/%j.out", str(HEAD),
        "--storage-path", str(storage), "--experiment-name", name,
        "--num-samples", "6", "--iters", "4", "--sleep", "1",
        env={"DQLRAY_DRIVER": str(STUB)},
    )
    starts = exp_dir / "starts.log"
    deadline = time.monotonic() + 180
    while not (starts.exists() and len(starts.read_text().splitlines()) >= 3):  # >= 1 trial done
        assert time.monotonic() < deadline, _read_log(tmp_path, job)[-4000:]
        assert slurm.job(job)["JobState"] in ("PENDING", "RUNNING"), _read_log(tmp_path, job)[-4000:]
        time.sleep(0.3)
    # What SLURM sends before the time limit (#SBATCH --signal=B:USR1@300), sent now.
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    info = slurm.wait(job)
    finished_first = {tid for tid, rows in _trial_results(exp_dir).items() if len(rows) == 4}
    log = _read_log(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    follow_up = re.search(r"resubmitted as job (\d+)", log)
    assert follow_up, log[-4000:]
    assert 1 <= len(finished_first) < 6, "the signal did not arrive mid-sweep"

    info2 = slurm.wait(follow_up.group(1), timeout=300)
    log2 = _read_log(tmp_path, follow_up.group(1))
    assert (info2["JobState"], info2["ExitCode"]) == ("COMPLETED", "0:0"), log2[-4000:]
    assert "resuming: resubmission 1 of at most 3" in log2 and " --resume" in log2
    assert info2["TimeLimit"] == info["TimeLimit"] and info2["NumNodes"] == "2"

    results = _trial_results(exp_dir)
    assert len(results) == 6 and all(rows[-1]["training_iteration"] == 4 for rows in results.values())
    started = [line.split()[0] for line in starts.read_text().splitlines()]
    for tid in finished_first:
        assert started.count(tid) == 1, f"trial {tid} finished in job {job} but ran again"
        assert len(results[tid]) == 4
    assert any(f"dqlray-{follow_up.group(1)}-" in line for line in starts.read_text().splitlines())
    _assert_clean(job, log)
    _assert_clean(follow_up.group(1), log2)


@SLURM
def test_worker_that_cannot_start_fails_the_job_fast_naming_the_node(slurm, tmp_path):
    # The fault: dqn2's Ray temp dir path is taken by a file (like a stale /tmp/ray of another
    # user, ray#4593), so the worker step exits before Ray starts, while the head is starting.
    job = slurm.sbatch(
        "--hold", *SMALL_JOB, f"--output={tmp_path}/%j.out", str(HEAD),
        "--storage-path", str(tmp_path / "results"), env={"DQLRAY_DRIVER": str(STUB)},
    )
    blocker = Path(f"/tmp/dqlray-{job}-dqn2")
    blocker.write_text("in the way\n")
    try:
        slurm.run("scontrol", "release", job)
        began = time.monotonic()
        info = slurm.wait(job, timeout=120)
        took = time.monotonic() - began
    finally:
        blocker.unlink(missing_ok=True)
    log = _read_log(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "1:0"), log[-4000:]
    assert "Ray failed to start on node(s) dqn2" in log, log
    assert "running: python" not in log
    assert took < 60, f"took {took:.0f} s to fail"
    assert not _job_processes(job)


@SLURM
def test_single_run_job_uses_the_shared_environment(slurm, tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text("import os, sys\nprint('ENTRY', sys.prefix, sys.argv[1:], os.environ.get('PASSED_ON'))\n")
    job = slurm.sbatch(
        "--cpus-per-task=1", "--mem=500M", "--time=5", f"--output={tmp_path}/%j.out", str(SINGLE),
        "--episodes", "3", env={"DQLRAY_DRIVER": str(entry), "PASSED_ON": "from-submit-env"},
    )
    info = slurm.wait(job, timeout=60)
    log = _read_log(tmp_path, job)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log
    assert re.search(r"ENTRY \S+ \['--episodes', '3'\] from-submit-env", log), log
    assert info["NumNodes"] == "1"
