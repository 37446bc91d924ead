"""Session fixture for tests/test_slurm.py: a real two-node SLURM on this machine.

``cluster/dev/local_slurm.sh start`` installs slurm-wlm and munge when missing (apt-get), puts
nodes dqn1 (10.77.0.11) and dqn2 (10.77.0.12) in network namespaces and waits until both are
idle; the fixture stops it again after the session unless it was already running before.
Needs root. When SLURM cannot be started the tests are skipped, except in CI (``CI=true``)
where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "cluster" / "dev" / "local_slurm.sh"
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
}


@dataclass
class SlurmCluster:
    """Handle on the local cluster: an environment for sbatch & co and a few helpers."""

    env: dict[str, str]
    nodes: dict[str, str] = field(default_factory=lambda: {"dqn1": "10.77.0.11", "dqn2": "10.77.0.12"})

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            ["sbatch", "--parsable", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert proc.returncode == 0, f"sbatch failed: {proc.stderr}"
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\S+?)=(\S*)", out))

    def wait(self, job_id: str, timeout: float = 240) -> dict[str, str]:
        """Wait until the job has ended; return its scontrol record (JobState, ExitCode, ...)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in FINAL_STATES:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", job_id, check=False)
                raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout} s")
            time.sleep(0.5)


def _python_env() -> dict[str, str]:
    """Make the jobs use the Python that runs the tests (the project's virtualenv in CI)."""
    if sys.prefix != sys.base_prefix:
        return {"DQLRAY_VENV": sys.prefix}
    return {"DQLRAY_ENV_SETUP": f'export PATH="{Path(sys.executable).parent}:$PATH"'}


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    in_ci = os.environ.get("CI") == "true"

    def unavailable(reason: str):
        if in_ci:
            pytest.fail(f"local SLURM cluster unavailable in CI: {reason}", pytrace=False)
        pytest.skip(f"local SLURM cluster unavailable: {reason}")

    if os.geteuid() != 0:
        unavailable("cluster/dev/local_slurm.sh needs root (network namespaces, daemons)")
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        unavailable("no slurm-wlm installed and no apt-get to install it")
    was_running = subprocess.run([str(LOCAL_SLURM), "status"], capture_output=True).returncode == 0
    try:
        start = subprocess.run([str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        unavailable("cluster/dev/local_slurm.sh start timed out")
    if start.returncode != 0:
        logs = ""
        for log in sorted(Path(os.environ.get("DQLRAY_SLURM_DIR", "/var/lib/dqlray-slurm"), "log").glob("*.log")):
            logs += f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        if not was_running:  # remove what a partial start left
            subprocess.run([str(LOCAL_SLURM), "stop"], capture_output=True, timeout=300)
        unavailable(f"cluster/dev/local_slurm.sh start failed:\n{start.stderr[-3000:]}{logs}")
    conf = subprocess.run([str(LOCAL_SLURM), "env"], capture_output=True, text=True).stdout
    env = dict(os.environ)
    env["SLURM_CONF"] = conf.strip().split("=", 1)[1]
    env.update(_python_env())
    for var in ("DQLRAY_DRIVER", "DQLRAY_RESUBMIT_COUNT", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    yield SlurmCluster(env=env)
    if not was_running:
        subprocess.run([str(LOCAL_SLURM), "stop"], capture_output=True, timeout=300)
