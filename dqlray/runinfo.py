"""What makes a run folder reproducible: versions, git commit, and atomic file writes.

Every write of a result goes through a temporary file and a rename, and a write that fails for want of space or
permission (ENOSPC, EDQUOT, EACCES, EPERM, EROFS) becomes one :class:`~dqlray.errors.WriteFailed` line naming the
folder and the space needed, with the temporary file removed and the previous version of the file left as it was
(issue 13).
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from dqlray.errors import DqlrayError, WriteFailed

_PACKAGES = ("dqlray", "numpy", "pandas", "torch", "gymnasium", "ray", "optuna", "matplotlib")


def package_versions() -> dict[str, str]:
    """Python and key package versions."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_SECRET_FLAG = re.compile(r"^--?[\w-]*(token|password|secret|api[_-]?key)[\w-]*$", re.IGNORECASE)


def safe_argv(argv: list[str]) -> list[str]:
    """A command line fit to store in a run folder: values of secret-looking flags (``--telegram_token X``,
    ``--telegram-token=X``, ...) and anything shaped like a bot token are replaced by ``<redacted>``."""
    from dqlray.notify.redact import MASK, redact

    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact(arg))
    return out


def git_commit(path: str | Path | None = None) -> str:
    """The git commit of the code (``+dirty`` when it has uncommitted changes), or ``unknown`` outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_folder(path: str | Path, what: str) -> None:
    """Refuse, in one line, a folder path that cannot be created because it or a parent is a file (issue 13 item 8).

    ``what`` names the setting (``--results_dir``). A path that does not exist yet is fine: it is created later.
    """
    p = Path(path)
    for part in (p, *p.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == p else f"is inside {part}, which is a file"
                raise DqlrayError(f"{what} {path}: {where}, not a folder")
            return


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename, so a reader never sees half a file.

    A full disk or a missing permission raises :class:`WriteFailed` (one line); ``path`` keeps its old content.
    """
    atomic_write_bytes(path, text.encode(), mode)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """:func:`atomic_write_text` for bytes."""
    p = Path(path)
    with guarded_write(p.parent, p.name, len(data)):
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.EROFS: "read-only file system"}


def human_bytes(n: float) -> str:
    """``288 KB``, ``1.4 MB``: sizes for messages (powers of 1024)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("bytes", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns at GB


def free_bytes(folder: str | Path) -> int | None:
    """Bytes free for this user on the filesystem of ``folder`` (or of its nearest existing parent)."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def write_failure(error: OSError, folder: str | Path, what: str, needed: int | None = None) -> WriteFailed | None:
    """The one-line :class:`WriteFailed` for a failed write of ``what`` into ``folder``, or None when ``error`` is
    not about space or permission (then it is a bug or a hardware fault, and its traceback is wanted)."""
    reason = _WRITE_ERRORS.get(error.errno or 0)
    if reason is None:
        return None
    detail = ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(folder)
        parts = ([f"needs about {human_bytes(needed)}"] if needed else []) + (
            [f"{human_bytes(free)} free"] if free is not None else [])
        detail = f" ({', '.join(parts)})" if parts else ""
    return WriteFailed(f"{folder}: {reason} writing {what}{detail}; files written before are intact")


def short_of_space(folder: str | Path, what: str, needed: int, hint: str = "") -> WriteFailed:
    """The one-line failure for ``folder``'s filesystem having less than ``needed`` bytes free for ``what``, found
    before writing (for writes that cannot be made atomic, such as Ray Tune's)."""
    free = free_bytes(folder)
    have = f", {human_bytes(free)} free" if free is not None else ""
    return WriteFailed(f"{folder}: too little free space for {what} (needs about {human_bytes(needed)}{have}); "
                       f"files written before are intact{hint}")


@contextmanager
def guarded_write(folder: str | Path, what: str, needed: int | None = None) -> Iterator[None]:
    """Turn a failed write of ``what`` into ``folder`` (disk full, quota, read-only, no permission) into one
    :class:`WriteFailed` line naming the folder and ``needed`` bytes; other errors pass unchanged. The caller
    removes its temporary files (in a ``finally`` or ``except`` inside this block)."""
    try:
        yield
    except OSError as e:
        failure = write_failure(e, folder, what, needed)
        if failure is None:
            raise
        raise failure from None


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as :func:`json_text`."""
    atomic_write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """Indented JSON of ``obj`` with NaN and infinity written as null (strict JSON; see :func:`json_ready`)."""
    return json.dumps(json_ready(obj), indent=2) + "\n"


def json_ready(obj: Any) -> Any:
    """``obj`` with NaN and infinity as None, NumPy scalars as Python numbers, tuples as lists and keys as strings."""
    if hasattr(obj, "item") and callable(obj.item):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj
