"""The local Ray cluster a sweep driver starts on its own machine (no ``--address``): private and cleaned up.

Three things Ray 2.60 does not do for a laptop or a login node (issue 13):

- **Token.** ``ray.init()`` turns token authentication on and writes ``~/.ray/auth_token`` world-readable (0644, in
  a 0755 ``~/.ray``) until someone tightens it. Here the token is created first, 0600 in a 0700 folder
  (``$XDG_STATE_HOME/dqlray/ray``, default ``~/.local/state/dqlray/ray``), and Ray is pointed at it with
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (read by Ray's C++ token loader) before it starts.
- **Loopback.** A local cluster listens on every interface (GCS, raylet, dashboard agent, runtime-env agent).
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take 127.0.0.1 as the node address, as it does on macOS and
  Windows, and every one of its servers then binds to loopback only. Set before ``ray`` is imported: Ray reads it
  at import.
- **Orphans.** A driver killed with SIGKILL leaves ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` behind
  (parent PID 1, one of them ignoring SIGTERM). Each driver gives its Ray a temp dir of its own and marks it with
  ``DQLRAY_RAY_TAG``, and records both with its own PID and start time in ``sessions/`` of that folder before Ray
  starts. The next sweep on this host stops the Ray processes of every recorded driver that is gone: those with
  the tag in their environment, the temp dir on their command line or a file below it open (the agents write their
  title over their environment, but keep their logs open), and their descendants. Never by process name, never a
  live driver's Ray, never a cluster joined with ``--address`` (nothing is recorded then).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dqlray.procs import ProcessId, stop_processes, tagged_processes
from dqlray.runinfo import atomic_write_text, guarded_write

TAG_VAR = "DQLRAY_RAY_TAG"  # the same variable marks a SLURM job's Ray (cluster/ray_cluster.py)
LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOKEN_FILE = "auth_token"


def state_dir(env: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/dqlray/ray`` or ``~/.local/state/dqlray/ray``: the token and the session records."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dqlray" / "ray"


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), created if needed."""
    with guarded_write(path.parent, path.name):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(path.stat().st_mode) != 0o700:
            path.chmod(0o700)
    return path


def write_token(path: str | Path) -> Path:
    """Write a fresh Ray auth token (Ray's own format: 64 hex digits) to a new 0600 file in a 0700 folder. The
    file is created with its final mode, so the token is never readable by others, not even for a moment."""
    p = Path(path)
    private_dir(p.parent)
    p.unlink(missing_ok=True)  # never reuse a stale token file
    with guarded_write(p.parent, p.name, 64):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return p


def local_token(directory: Path) -> Path:
    """This user's token for local clusters (``directory/auth_token``): created once, kept 0600 in a 0700 folder.
    One token for every local sweep, so a browser that has it (the dashboard asks once) keeps working."""
    private_dir(directory)
    p = directory / TOKEN_FILE
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
        valid = len(p.read_text().strip()) >= 32
    except FileNotFoundError:
        return write_token(p)
    if not valid:
        return write_token(p)
    if mode & 0o077:
        p.chmod(0o600)
    return p


@dataclass(frozen=True)
class LocalRay:
    """What a driver's local Ray is marked and recorded with."""

    tag: str
    temp_dir: Path
    token: Path | None
    record: Path

    @property
    def ray_temp_dir(self) -> Path:
        """Ray's temp dir, inside ``temp_dir``: Ray opens it to everyone (0777, again and again), the 0700
        ``temp_dir`` around it keeps its logs and sockets the driver's own."""
        return self.temp_dir / "r"

    def processes(self) -> dict[int, str]:
        """This Ray's processes that still run."""
        return tagged_processes(TAG_VAR, self.tag, path=str(self.temp_dir))


def _private_temp_dir() -> Path:
    """A new private (0700) temp dir for one local Ray. Short: Ray's socket paths below it (``r/session_<date>_
    <pid>/sockets/plasma_store``, 69 bytes) must stay within Linux's 107 bytes, so a long ``$TMPDIR`` gives way to
    /tmp."""
    base = tempfile.gettempdir()
    if len(base) + 20 + 69 > 107:
        base = "/tmp"
    with guarded_write(base, "Ray's temp dir"):
        return Path(tempfile.mkdtemp(prefix="dqlray-ray-", dir=base))


def _session_files(directory: Path) -> list[Path]:
    return sorted((directory / "sessions").glob("*.json"))


def reap_orphans(directory: Path, out: Callable[[str], None] = print) -> int:
    """Stop the Ray processes left on this host by sweep drivers that are gone; returns how many were stopped.

    Only drivers recorded in ``directory/sessions`` on this host count; a driver that still runs keeps its Ray.
    """
    stopped = 0
    for rec_path in _session_files(directory):
        try:
            rec = json.loads(rec_path.read_text())
            driver = ProcessId.from_dict(rec["driver"])
            tag = str(rec["tag"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not driver.local or driver.alive():
            continue
        ray = LocalRay(tag=tag, temp_dir=Path(rec.get("temp_dir") or "/nonexistent"), token=None, record=rec_path)
        found = ray.processes()
        if found:
            left = stop_processes(ray.processes)
            stopped += len(found) - len(left)
            if left:
                out(f"warning: {len(left)} Ray process(es) of the crashed sweep driver PID {driver.pid} are still "
                    f"running ({', '.join(map(str, sorted(left)))}); they are retried on the next sweep")
                continue
            out(f"Stopped {len(found)} Ray process(es) left behind by the sweep driver PID {driver.pid} "
                f"({rec.get('experiment', '?')}), which was killed; its Ray logs are in {ray.temp_dir}")
        rec_path.unlink(missing_ok=True)
    return stopped


@contextmanager
def local_ray_environment(experiment: Path, out: Callable[[str], None] = print) -> Iterator[LocalRay]:
    """Prepare this process to start a private, loopback-only local Ray (enter before ``import ray``), record it
    for the orphan clean-up, and undo it all on exit (call ``ray.shutdown()`` inside the block): the environment is
    restored, any process of this Ray still running is stopped, and the record removed."""
    directory = private_dir(state_dir())
    reap_orphans(directory, out)
    me = ProcessId.of()
    tag = f"local-{me.host}-{me.pid}-{me.start}"
    env: dict[str, str] = {TAG_VAR: tag, LOOPBACK_VAR: "0"}
    token = None
    if os.environ.get("RAY_AUTH_MODE", "token").lower() == "token":
        env["RAY_AUTH_MODE"] = "token"
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            token = local_token(directory)
            env["RAY_AUTH_TOKEN_PATH"] = str(token)
        elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
            token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    ray = LocalRay(tag=tag, temp_dir=_private_temp_dir(), token=token,
                   record=private_dir(directory / "sessions") / f"{tag}.json")
    atomic_write_text(ray.record, json.dumps({"tag": tag, "driver": me.to_dict(), "temp_dir": str(ray.temp_dir),
                                              "experiment": str(experiment)}) + "\n")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield ray
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        # After ray.shutdown() (inside the block): stop what of this Ray still runs (an agent that lingers); the
        # record stays for the next sweep if anything could not be stopped.
        if not stop_processes(ray.processes, grace=2.0):
            shutil.rmtree(ray.temp_dir, ignore_errors=True)
            ray.record.unlink(missing_ok=True)
