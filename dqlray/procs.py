"""Processes on this host: who is alive (by PID *and* start time), and finding and stopping a group of processes
by a tag in their environment, never by name.

A PID alone does not name a process: after a crash the PID may be reused by an unrelated one. A process is named
here by its PID and its start time (clock ticks since boot, ``/proc/PID/stat`` field 22) together with the boot id,
so a lock or a record written by a process that is gone is recognised as stale even when its PID is taken again.
Ray rewrites its processes' titles (``ray::DashboardAgent``, ``ray::IDLE``) but not their environment, so a
variable set before Ray starts marks every process of that Ray, and their descendants are found through the
parent links. Linux ``/proc`` only; elsewhere the start time is unknown and liveness falls back to ``kill(pid, 0)``.
Used by the folder lock (:mod:`dqlray.lock`), the local Ray of a sweep (:mod:`dqlray.tuning.local_ray`) and the
SLURM teardown (``cluster/ray_cluster.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from typing import NamedTuple


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stat_fields(pid: int) -> list[str]:
    """Fields of ``/proc/PID/stat`` after the command name (which may hold spaces and parentheses)."""
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return stat.rsplit(")", 1)[1].split() if ")" in stat else []


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None (no such process, or no ``/proc``)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19])  # field 22 of the whole line; fields here start at field 3
    except (IndexError, ValueError):
        return None


def parent_pid(pid: int) -> int | None:
    """Parent PID of ``pid``, or None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def boot_id() -> str | None:
    """This boot's id (``/proc/sys/kernel/random/boot_id``): start times compare only within one boot."""
    return _read("/proc/sys/kernel/random/boot_id").decode().strip() or None


def hostname() -> str:
    """This host's name as processes record it."""
    return socket.gethostname()


class ProcessId(NamedTuple):
    """A process on a host: PID, start time and boot, which together cannot be reused."""

    host: str
    pid: int
    start: int | None
    boot: str | None

    @classmethod
    def of(cls, pid: int | None = None) -> ProcessId:
        """The identity of ``pid`` (this process by default) on this host."""
        pid = os.getpid() if pid is None else pid
        return cls(hostname(), pid, start_ticks(pid), boot_id())

    @classmethod
    def from_dict(cls, d: dict) -> ProcessId:
        """Read back :meth:`to_dict` (missing fields are None)."""
        return cls(str(d.get("host", "")), int(d.get("pid", 0)), d.get("start"), d.get("boot"))

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {"host": self.host, "pid": self.pid, "start": self.start, "boot": self.boot}

    @property
    def local(self) -> bool:
        """True if it was recorded on this host."""
        return self.host == hostname()

    def alive(self) -> bool:
        """True if this very process still runs (only answerable for a process of this host)."""
        if not self.local or self.pid <= 0:
            return False
        if self.boot is not None and boot_id() not in (None, self.boot):
            return False  # the host rebooted since
        if not _pid_exists(self.pid):
            return False
        now = start_ticks(self.pid)
        if now is None or self.start is None:
            return True  # no /proc to tell a reused PID apart: assume it is the same process
        return now == self.start and not _zombie(self.pid)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == "Z"


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited child not yet reaped)."""
    return _pid_exists(pid) and not _zombie(pid)


def _mentions(cmdline: bytes, path: bytes) -> bool:
    """True if the NUL-separated command line names ``path`` or something below it."""
    if not path:
        return False
    cmdline += b"\0"
    return path + b"/" in cmdline or path + b"\0" in cmdline


def _ancestors(pid: int) -> set[int]:
    out, p = set(), pid
    while p and p > 1 and p not in out:
        out.add(p)
        p = parent_pid(p) or 0
    return out


def _has_open_below(pid: int, path: str) -> bool:
    """True if ``pid`` has a file below ``path`` open (its log files, for Ray's processes)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(path + "/"):
                return True
        except OSError:
            continue
    return False


def tagged_processes(var: str, tag: str, *, path: str | None = None) -> dict[int, str]:
    """Processes of this host marked as one group, with all their descendants: those with ``var=tag`` in their
    environment, and those whose command line names ``path`` (or a file below it) or that have a file below
    ``path`` open. The caller and its ancestors are never included. Returns ``{pid: command line}``.

    The open files matter for processes that outlive their parent: Ray's agents write their process title over
    their environment and command line, but keep their log files (below Ray's temp dir) open.
    """
    me = _ancestors(os.getpid())
    entry = f"{var}={tag}".encode()
    path_b = path.rstrip("/").encode() if path else b""
    parents: dict[int, int] = {}
    cmdlines: dict[int, str] = {}
    roots: set[int] = set()
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not name.isdigit():
            continue
        pid = int(name)
        ppid = parent_pid(pid)
        if pid in me or ppid is None:
            continue
        parents[pid] = ppid
        cmd = _read(f"/proc/{pid}/cmdline")
        cmdlines[pid] = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
        if (entry in _read(f"/proc/{pid}/environ").split(b"\0") or _mentions(cmd, path_b)
                or (path_b and _has_open_below(pid, path_b.decode()))):
            roots.add(pid)
    found = set(roots)
    changed = True
    while changed:  # add descendants
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return {pid: cmdlines.get(pid, "") for pid in sorted(found) if not _zombie(pid)}


def stop_processes(find: Callable[[], dict[int, str]], grace: float = 5.0) -> dict[int, str]:
    """SIGTERM what ``find()`` returns, SIGKILL what is left after ``grace`` seconds (Ray's agents may ignore
    SIGTERM), and return what is still running after that (empty when all are gone). ``find`` is called again
    after each signal, so processes started meanwhile by the group are caught too."""
    procs = find()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in procs:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while procs and time.monotonic() < deadline:
            time.sleep(0.1)
            procs = find()
        if not procs:
            break
    return procs
