"""On-disk spool for messages that could not reach Telegram (compute nodes often have no internet).

One JSON file per message, ``<created_ns>-<event id>.json``, with copies of its pictures, so the relay can run
elsewhere and later (issue 13 item 5); 0600 files in a 0700 folder whatever the umask (item 6), atomic, redacted. The
relay claims a file by renaming it to ``.sending`` (two relays never send one file), and deletes it once delivered.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dqlray.errors import ConfigError, WriteFailed
from dqlray.notify.redact import redact
from dqlray.runinfo import atomic_write_bytes

SPOOL_VERSION = 1


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled message; picture paths are absolute (the relay says when one is missing)."""

    path: Path
    text: str
    silent: bool
    photo_path: str | None
    attachments: tuple[str, ...]
    created: float


class Spool:
    """A spool directory. Cheap to construct; the directory is created on first write."""

    def __init__(self, directory: str | os.PathLike[str], secrets: Iterable[str | None] = ()) -> None:
        self.directory = Path(directory).expanduser()
        self._secrets = tuple(s for s in secrets if s)

    def ensure_dir(self) -> Path:
        """Create the directory and missing parents 0700 whatever the umask (XDG); tighten it if ours, else refuse."""
        for d in [*reversed(self.directory.parents), self.directory]:
            if not d.exists():
                d.mkdir(mode=0o700, exist_ok=True)
                os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
        st = self.directory.stat()
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise ConfigError(f"refusing spool directory {self.directory}: owned by uid {st.st_uid}, not you; "
                              "set DQLRAY_NOTIFY_SPOOL or spool_dir to a directory of your own")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)
        return self.directory

    def _keep_picture(self, stem: str, i: int, src: str) -> str:
        """Copy picture ``src`` into the spool; its file name there, or ``src`` made absolute if it cannot be read
        (the relay then reports it missing)."""
        name = f"{stem}.{i}{Path(src).suffix.lower()}"
        try:
            atomic_write_bytes(self.directory / name, Path(src).read_bytes(), 0o600)
        except (OSError, WriteFailed):
            return os.path.abspath(src)
        return name

    def put(self, *, event_id: str, created: float, text: str, silent: bool = False,
            photo_path: str | None = None, attachments: Iterable[str] = ()) -> Path:
        """Write one message (and copies of its pictures); return its path. Same ``event_id`` and ``created`` ->
        same file."""
        directory = self.ensure_dir()
        safe_id = "".join(c for c in event_id if c.isalnum() or c in "-_")[:64] or "event"
        stem = f"{int(created * 1e9):020d}-{safe_id}"
        pictures = [self._keep_picture(stem, i, p) for i, p in enumerate([photo_path or "", *attachments]) if p]
        record = {"version": SPOOL_VERSION, "id": event_id, "created": created, "text": redact(text, self._secrets),
                  "silent": bool(silent), "photo_path": pictures.pop(0) if photo_path else None,
                  "attachments": pictures}
        final = directory / f"{stem}.json"
        atomic_write_bytes(final, json.dumps(record, ensure_ascii=False).encode("utf-8"), 0o600)
        return final
    def _glob(self, pattern: str) -> list[Path]:
        return sorted(self.directory.glob(pattern)) if self.directory.is_dir() else []

    def pending(self) -> list[Path]:
        """Queued files, oldest first."""
        return self._glob("*.json")

    def claimed(self) -> list[Path]:
        """Files claimed by a relay that has not finished (it may still be running, or have died mid-send)."""
        return self._glob("*.sending")

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

    def done(self, claimed: Path, *, pictures: bool = True) -> None:
        """Delete a delivered file, and its pictures unless ``pictures`` is False (the relay still sends them)."""
        claimed.unlink(missing_ok=True)
        for picture in self.directory.glob(f"{claimed.stem}.[0-9]*") if pictures else ():
            picture.unlink(missing_ok=True)

    def reclaim_stale(self, older_than_s: float = 3600.0) -> int:
        """Rename ``.sending`` files older than ``older_than_s`` back to ``.json`` (a relay died mid-send; its
        message may have gone out, so this risks one duplicate rather than a loss). Returns how many."""
        n = 0
        for path in self.claimed():
            try:
                if time.time() - path.stat().st_mtime >= older_than_s:
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
        photo = data.get("photo_path")
        return SpoolEntry(path=path, text=str(data["text"]), silent=bool(data.get("silent", False)),
                          photo_path=str(path.parent / photo) if photo else None,
                          attachments=tuple(str(path.parent / p) for p in data.get("attachments") or ()),
                          created=float(data.get("created", 0.0)))
