"""Loading speed of a large price file: dqlray's loader against a plain ``pd.read_csv`` of the same file (issue 13
item 9).

    python -m bench.data_load [--bars 1000000] [--repeats 3] [--file PATH]

Without ``--file`` it writes 1,000,000 minute bars (``Date,Open,High,Low,Close,Volume``, prices with two decimals,
whole volumes, as vendors' minute files are) to a temporary folder. Each measurement runs in a fresh child process,
so its peak RSS (``ru_maxrss``) belongs to that load alone; the two loaders alternate, and the median of the repeats is
shown. Time is the load itself (imports excluded); peak RSS is the whole child's, imports included, for both.
Goal: dqlray's loader (``load_ohlcv``, every check included) within 2x of ``pd.read_csv`` in time and memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = """
import json, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
if mode == "dqlray":
    from dqlray.data import load_ohlcv
    t0 = time.perf_counter()
    rows = len(load_ohlcv(path))
else:
    import pandas as pd
    t0 = time.perf_counter()
    rows = len(pd.read_csv(path))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": rows}))
"""

LOADERS = {"dqlray": "dqlray load_ohlcv", "pandas": "pd.read_csv(path)"}


def write_minute_bars(path: Path, bars: int, seed: int = 0) -> None:
    """A random walk of ``bars`` minute bars, valid for the loader (High >= Open, Close >= Low > 0)."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, bars)))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 5e-4, bars)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 5e-4, bars)))
    o, h, lo, c = (np.round(a, 2) for a in (open_, high, low, close))
    h, lo = np.maximum(h, np.maximum(o, c)), np.minimum(lo, np.minimum(o, c))  # rounding must not cross the bar
    dates = pd.date_range("2020-01-01", periods=bars, freq="min").strftime("%Y-%m-%d %H:%M:%S")
    frame = pd.DataFrame({"Date": dates, "Open": o, "High": h, "Low": lo, "Close": c,
                          "Volume": rng.integers(100, 100_000, bars)})
    frame.to_csv(path, index=False, float_format="%.2f")


def measure(mode: str, path: Path) -> dict[str, float]:
    """One load in a fresh child process."""
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--file", default=None, help="measure this file instead of writing one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.file) if args.file else Path(tmp) / "minute_bars.csv"
        if not args.file:
            write_minute_bars(path, args.bars)
        size_mb = path.stat().st_size / 1e6
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in LOADERS}
        for _ in range(args.repeats):
            for mode in LOADERS:
                runs[mode].append(measure(mode, path))
    rows = runs["pandas"][0]["rows"]
    print(f"Loading {path.name if args.file else f'{rows:,} minute bars'}: {size_mb:.0f} MB, {rows:,} rows, "
          f"median of {args.repeats} runs, each in a fresh process")
    print(f"{'loader':<22}{'seconds':>10}{'peak RSS MB':>14}   runs")
    med = {}
    for mode, label in LOADERS.items():
        t = statistics.median(r["seconds"] for r in runs[mode])
        m = statistics.median(r["peak_mb"] for r in runs[mode])
        med[mode] = (t, m)
        print(f"{label:<22}{t:>10.2f}{m:>14.0f}   {[round(r['seconds'], 2) for r in runs[mode]]} s, "
              f"{[round(r['peak_mb']) for r in runs[mode]]} MB")
    rt, rm = med["dqlray"][0] / med["pandas"][0], med["dqlray"][1] / med["pandas"][1]
    print(f"ratio dqlray / pandas: time {rt:.2f}x, peak memory {rm:.2f}x "
          f"(goal <= 2x: time {'met' if rt <= 2 else 'NOT met'}, memory {'met' if rm <= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
