"""One run per experiment folder: a lock file naming the holder's host, PID and start time.

Two ``train_single.py --experiment_name X`` (or two ``tune_main.py --experiment-name X``) at once would write into
the same folder and destroy each other's results (issue 13). The first takes ``<folder>/dqlray.lock``; the second
is refused with one line naming the folder and the holder. The lock goes when its holder exits (normally, with an
error, after SIGTERM/SIGUSR1 or Ctrl-C). A lock whose holder is gone without removing it (SIGKILL, a crash) is
taken over: on the same host when the PID no longer runs or now belongs to another process (the start time differs);
a lock of another host cannot be checked from here, so it is refused with the file to remove if that run has ended.
Ray workers of a sweep write into the folder under their driver's lock and never take it themselves.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dqlray.errors import FolderInUse
from dqlray.procs import ProcessId
from dqlray.runinfo import guarded_write

LOCK_FILE = "dqlray.lock"


def _describe(holder: dict[str, Any]) -> str:
    since = f", since {holder['since']}" if holder.get("since") else ""
    return f"{holder.get('command') or 'a dqlray run'} (PID {holder.get('pid')} on host {holder.get('host')}{since})"


def read_lock(folder: str | Path) -> dict[str, Any] | None:
    """The holder recorded in ``folder``'s lock file, None if there is none (``{}`` if it is unreadable)."""
    return _read_record(Path(folder) / LOCK_FILE)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _try_create(path: Path, record: dict[str, Any]) -> bool:
    """Create the lock file atomically with ``record``; False if it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record) + "\n")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return True


@contextmanager
def hold_folder(folder: str | Path, *, command: str | None = None, flag: str = "--experiment-name",
                out: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for the duration of the block; refuse with :class:`FolderInUse` (one
    line) when another live run holds it. ``command`` names this run in the lock (default: the script name);
    ``flag`` is the option named in the hint. A folder this call created and left empty is removed again."""
    p = Path(folder)
    created = not p.exists()
    with guarded_write(p.parent, f"the folder {p.name}"):
        p.mkdir(parents=True, exist_ok=True)
    lock = p / LOCK_FILE
    me = ProcessId.of()
    record = {**me.to_dict(), "command": command or Path(sys.argv[0]).name,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with guarded_write(p, LOCK_FILE, len(json.dumps(record)) + 1):
        _acquire(p, lock, record, flag, out)
    try:
        yield p
    finally:
        held = read_lock(p) or {}
        if held.get("pid") == me.pid and held.get("host") == me.host and held.get("start") == me.start:
            lock.unlink(missing_ok=True)
        if created:
            try:
                p.rmdir()  # only when empty: nothing was written after all
            except OSError:
                pass


def _acquire(p: Path, lock: Path, record: dict[str, Any], flag: str, out: Callable[[str], None] | None) -> None:
    for _ in range(3):
        if _try_create(lock, record):
            return
        holder = read_lock(p)
        if holder is None:
            continue  # released meanwhile
        if not holder:
            # An empty or half-written lock: its writer may be between creating and writing it; if it stays
            # that way it was left by a crash in that instant.
            time.sleep(0.5)
            if read_lock(p) != {}:
                continue
            raise FolderInUse(f"{p} is locked by an unreadable {lock}; if no run uses this folder, remove that file")
        who = ProcessId.from_dict(holder)
        if not who.local:
            raise FolderInUse(f"{p} is in use by {_describe(holder)}; that host cannot be checked from here: if that "
                              f"run has ended, remove {lock}")
        if who.alive():
            raise FolderInUse(f"{p} is in use by {_describe(holder)}; wait for it to end or use another {flag}")
        _take_over(p, lock, holder)
        if out is not None:
            out(f"note: {p}: took over the lock of {_describe(holder)}, which is no longer running")
    raise FolderInUse(f"{p}: could not take the lock {lock} (another run is taking it at the same moment)")


def _take_over(p: Path, lock: Path, stale: dict[str, Any]) -> None:
    """Remove a stale lock, unless another run replaced it meanwhile. Two runs taking over the same stale lock at
    once are serialised by a second lock file; only the one that still finds the stale holder removes it."""
    guard = p / f"{LOCK_FILE}.takeover"
    me = ProcessId.of()
    if not _try_create(guard, me.to_dict()):
        holder = _read_record(guard)
        if holder and ProcessId.from_dict(holder).alive():
            return  # the other run takes it over; the caller retries creating the lock
        guard.unlink(missing_ok=True)  # left by a run that died in this very step
        if not _try_create(guard, me.to_dict()):
            return
    try:
        if read_lock(p) == stale:
            lock.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)

