"""A single run's per-episode metrics as TensorBoard logs, next to the ones Ray Tune writes for every trial.

``tensorboard --logdir results/`` then shows single runs and sweeps side by side. The event file is written here
directly (a TFRecord of ``Event`` protocol buffers holding scalar summaries, a few dozen bytes each): tensorboardX
would do the same but imports torch, which costs seconds in ``dqlray report``.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from pathlib import Path

import pandas as pd

from dqlray.runinfo import guarded_write

SKIP = ("episodes", "episodes_completed")


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    c = crc32c(data)
    return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes_field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None, tag: str | None = None,
          value: float | None = None) -> bytes:
    """One serialized ``tensorflow.Event``: the file-version header, or a scalar summary ``tag = value`` at ``step``."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)  # wall_time (1, double), step (2, int64)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if tag is not None and value is not None:  # summary (5) { value (1) { tag (1), simple_value (2, float) } }
        val = _bytes_field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
        out += _bytes_field(5, _bytes_field(1, val))
    return out


def record(data: bytes) -> bytes:
    """A TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    head = struct.pack("<Q", len(data))
    return head + _masked(head) + data + _masked(data)


def export_tensorboard(metrics: pd.DataFrame, log_dir: str | Path) -> Path:
    """Write every numeric column of ``metrics.csv`` as a scalar over episodes (``train/...``, ``validation/...``).

    The folder's event files are replaced, so a report made twice does not show every curve twice.
    """
    out = Path(log_dir)
    with guarded_write(out.parent, out.name):
        out.mkdir(parents=True, exist_ok=True)
    now = time.time()
    steps = metrics["episodes"] if "episodes" in metrics else pd.Series(range(1, len(metrics) + 1))
    chunks = [record(event(now, file_version="brain.Event:2"))]
    for col in metrics.columns:
        if col in SKIP:
            continue
        vals = pd.to_numeric(metrics[col], errors="coerce")
        group = "validation" if col.startswith("val_") else "train"
        for step, v in zip(steps, vals, strict=True):
            if v == v and math.isfinite(v):
                chunks.append(record(event(now, int(step), tag=f"{group}/{col}", value=float(v))))
    path = out / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.dqlray"
    tmp = out / ".events.partial"
    data = b"".join(chunks)
    try:
        with guarded_write(out, path.name, len(data)):
            tmp.write_bytes(data)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: the earlier event file stays (issue 13)
        raise
    for f in out.glob("events.out.tfevents.*"):
        f.unlink()
    tmp.replace(path)
    return path
