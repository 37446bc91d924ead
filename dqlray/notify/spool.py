"""On-disk spool for messages that could not reach Telegram (compute nodes often have no internet).

Layout: one JSON file per message in a 0700 directory, each file 0600, written atomically (temporary file in the same
directory, fsync, ``os.replace``). The file name is ``<created_ns>-<event id>.json``, so spooling the same event twice
overwrites one file instead of duplicating it. ``dqlray notify relay`` drains it from a node that can reach Telegram:
each file is *claimed* by an atomic rename to ``.sending`` (two relays never send the same file), deleted after
delivery, renamed back after a failure. Contents are redacted before they touch the disk.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqlray.notify.credentials import NotifyConfigError
from dqlray.notify.redact import redact

SPOOL_VERSION = 1


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled message."""

    path: Path
    """The claimed file (``.sending``) or the queued one (``.json``)."""
    text: str
    """HTML text, redacted."""
    silent: bool
    """Send without a notification sound."""
    photo_path: str | None
    """Send as a photo with ``text`` as caption (when the file still exists)."""
    attachments: tuple[str, ...]
    """Pictures to send after the text (the equity curve)."""
    created: float
    """Unix time the event was created."""


class Spool:
    """A spool directory. Cheap to construct; the directory is created on first write."""

    def __init__(self, directory: str | os.PathLike[str], secrets: Iterable[str | None] = ()) -> None:
        self.directory = Path(directory).expanduser()
        self._secrets = tuple(s for s in secrets if s)

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r})"

    def ensure_dir(self) -> Path:
        """Create the directory 0700 (parents too); tighten it to 0700 if it is ours but looser; refuse if not ours."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.directory.stat()
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise NotifyConfigError(
                f"refusing spool directory {self.directory}: owned by uid {st.st_uid}, not you; "
                "set DQLRAY_NOTIFY_SPOOL or spool_dir to a directory of your own"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)
        return self.directory

    def put(self, *, event_id: str, created: float, text: str, silent: bool = False,
            photo_path: str | None = None, attachments: Iterable[str] = ()) -> Path:
        """Write one message atomically (0600); return its path. Same ``event_id`` and ``created`` -> same file."""
        directory = self.ensure_dir()
        record: dict[str, Any] = {
            "version": SPOOL_VERSION,
            "id": event_id,
            "created": created,
            "text": redact(text, self._secrets),
            "silent": bool(silent),
            "photo_path": photo_path,
            "attachments": list(attachments),
        }
        safe_id = "".join(c for c in event_id if c.isalnum() or c in "-_")[:64] or "event"
        final = directory / f"{int(created * 1e9):020d}-{safe_id}.json"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")  # mkstemp creates 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:  # make the rename durable too
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
        return final

    def pending(self) -> list[Path]:
        """Queued files, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.json"))

    def claimed(self) -> list[Path]:
        """Files claimed by a relay that has not finished (it may still be running, or have died mid-send)."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.sending"))

    def claim(self, path: Path) -> Path | None:
        """Atomically take ``path`` for sending; ``None`` if another relay took it first."""
        target = path.with_suffix(".sending")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        return target

    def release(self, claimed: Path) -> None:
        """Give a claimed file back (delivery failed; a later relay retries it)."""
        os.rename(claimed, claimed.with_suffix(".json"))

    def done(self, claimed: Path) -> None:
        """Delete a delivered file."""
        claimed.unlink(missing_ok=True)

    def reclaim_stale(self, older_than_s: float = 3600.0) -> int:
        """Rename ``.sending`` files older than ``older_than_s`` back to ``.json`` (a relay died mid-send; its
        message may have gone out, so this risks one duplicate rather than a loss). Returns how many."""
        n = 0
        now = time.time()
        for path in self.claimed():
            try:
                if now - path.stat().st_mtime >= older_than_s:
                    self.release(path)
                    n += 1
            except OSError:
                continue
        return n

    @staticmethod
    def load(path: Path) -> SpoolEntry:
        """Read one spool file (queued or claimed)."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "text" not in data:
            raise ValueError(f"spool file {path} is not a dqlray notify message")
        return SpoolEntry(
            path=path,
            text=str(data["text"]),
            silent=bool(data.get("silent", False)),
            photo_path=data.get("photo_path"),
            attachments=tuple(data.get("attachments") or ()),
            created=float(data.get("created", 0.0)),
        )
