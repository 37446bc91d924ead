"""What makes a run folder reproducible: versions, git commit, and atomic file writes."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from dqlray.errors import DqlrayError

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
    """Write ``text`` to ``path`` via a temporary file and a rename, so a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
