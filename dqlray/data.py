"""Market data: loading and validating OHLCV files, the synthetic market, splits and the data hash.

A loaded series is an :class:`OHLCV` (NumPy arrays, timestamps as ``datetime64[ns]``). Nothing is back-filled or
dropped: a file with a problem is refused with one message that names the file, the row or column, and the problem.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dqlray.errors import DataError

PRICE_COLUMNS = ("open", "high", "low", "close")
_DATE_NAMES = ("date", "datetime", "timestamp", "time")
_US_DATE = re.compile(r"^\s*\d{1,2}/\d{1,2}/\d{4}")


@dataclass(frozen=True)
class OHLCV:
    """A validated price series. Arrays are read-only and share one length."""

    time: np.ndarray  # datetime64[ns], strictly increasing
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray | None = None
    adj_close: np.ndarray | None = None
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.close)

    @property
    def price(self) -> np.ndarray:
        """The series returns are earned on: adjusted close when the file has one, else close."""
        return self.adj_close if self.adj_close is not None else self.close

    def slice(self, start: int, stop: int) -> OHLCV:
        """Rows ``start:stop`` as a new series (used to cut a file to a date range)."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[start:stop]

        return OHLCV(
            time=self.time[start:stop], open=self.open[start:stop], high=self.high[start:stop],
            low=self.low[start:stop], close=self.close[start:stop], volume=cut(self.volume),
            adj_close=cut(self.adj_close), source=self.source,
        )

    def to_frame(self) -> pd.DataFrame:
        """The series as the CSV layout users have: Date, Open, High, Low, Close[, Adj Close], Volume."""
        cols: dict[str, np.ndarray] = {
            "Date": self.time, "Open": self.open, "High": self.high, "Low": self.low, "Close": self.close,
        }
        if self.adj_close is not None:
            cols["Adj Close"] = self.adj_close
        if self.volume is not None:
            cols["Volume"] = self.volume
        return pd.DataFrame(cols)


def data_hash(data: OHLCV) -> str:
    """SHA-256 (first 16 hex digits) of the parsed series: the same prices give the same hash in CSV or Parquet."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data.time.astype("datetime64[ns]").astype(np.int64)).tobytes())
    for arr in (data.open, data.high, data.low, data.close, data.volume, data.adj_close):
        h.update(b"|" if arr is None else np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------- loading

DATA_DIR = "data"
"""Where the HPC guide keeps its datasets: a relative file name not found as given is also looked for here."""


def find_data_file(path: str | Path) -> Path:
    """The file ``path`` names: as given, else (for a relative path) under ``data/``, the guide's data folder.

    Raises :class:`DataError` naming every place it looked, so a job started from another folder says where it
    searched rather than only "no such file".
    """
    p = Path(path)
    candidates = [p]
    if not p.is_absolute() and p.parts and p.parts[0] != DATA_DIR:
        candidates.append(Path(DATA_DIR) / p)  # the guide names its datasets bare: --data_file test_small.csv
    for c in candidates:
        if c.exists():
            return c
    looked = " and ".join(str(c.absolute()) for c in candidates)
    raise DataError(f"{path}: no such file (looked for {looked})")


def load_ohlcv(path: str | Path) -> OHLCV:
    """Load and validate a CSV or Parquet OHLCV file.

    Columns are matched case-insensitively (``Date/Open/High/Low/Close/Volume``, optional ``Adj Close``); dates may
    be ISO (``1999-01-04``, with or without a time) or US (``1/4/1999``). A relative path not found as given is
    looked for under ``data/`` (:func:`find_data_file`). Raises :class:`DataError` naming the file and the row or
    column for every problem; nothing is repaired silently.
    """
    p = find_data_file(path)
    name = str(p)
    suffix = p.suffix.lower()
    if p.is_dir() and suffix not in (".parquet", ".pq"):  # a Parquet dataset may be a folder; nothing else may
        raise DataError(f"{name}: is a directory, not a price file (.csv or .parquet)")
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
            if df.index.name is not None and df.index.name.lower() in _DATE_NAMES:
                df = df.reset_index()
        elif suffix in (".csv", ".txt", ".gz"):
            df = _read_csv(p)
        else:
            raise DataError(f"{name}: unsupported file type {suffix!r}; allowed: .csv, .parquet")
    except DataError:
        raise
    except Exception as e:  # a parser error: one line, no traceback
        raise DataError(f"{name}: cannot be read as {suffix.lstrip('.')}: {str(e).splitlines()[0]}") from None
    return frame_to_ohlcv(df, source=name)


def _read_csv(p: Path) -> pd.DataFrame:
    """The CSV with numbers parsed by pandas' C parser and every other cell kept as its text.

    Issue 13 item 9: reading every cell as text and converting value by value cost ten times a plain
    ``pd.read_csv``. pandas 3 parses floats exactly as Python's ``float`` does (``tests/test_data.py`` checks it),
    so a column the parser reads as numbers is taken as it is. ``keep_default_na=False`` keeps an empty cell or
    ``NA`` as text, so that such a column stays text and :func:`_numeric` names its first bad cell. A date column
    the parser took for numbers (``20200102``), and any column it guessed as another type (``True``/``False``), are
    read again as their text. (``dtype={date: str}`` in the first read would do the same at three times its cost.)
    """
    df = pd.read_csv(p, keep_default_na=False)
    date_col = _date_column(df.columns)
    retext = [c for c in df.columns if not (pd.api.types.is_string_dtype(df[c].dtype)
                                            or (_is_number_dtype(df[c].dtype) and c != date_col))]
    if retext:
        text = pd.read_csv(p, usecols=retext, dtype=str, keep_default_na=False)
        for c in retext:
            df[c] = text[c]
    return df


def _is_number_dtype(dtype: object) -> bool:
    """Integers and floats; not booleans (a ``True`` in a price column is an error, not 1.0)."""
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _norm(col: object) -> str:
    return re.sub(r"[\s_]+", "", str(col).strip().lower())


def _date_column(columns: pd.Index) -> object | None:
    """The first column named like a date (``Date``, ``Datetime``, ``Timestamp``, ``Time``; any case), or None."""
    by_norm: dict[str, object] = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    return next((by_norm[n] for n in _DATE_NAMES if n in by_norm), None)


def frame_to_ohlcv(df: pd.DataFrame, source: str = "<memory>") -> OHLCV:
    """Validate a DataFrame in a user's layout and turn it into an :class:`OHLCV`."""
    by_norm: dict[str, str] = {}
    for c in df.columns:
        by_norm.setdefault(_norm(c), c)
    date_col = _date_column(df.columns)
    missing = [c.capitalize() for c in PRICE_COLUMNS if c not in by_norm]
    if date_col is None:
        missing.insert(0, "Date")
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'} "
            "(need Date, Open, High, Low, Close; Volume and Adj Close optional; any letter case)"
        )
    if len(df) == 0:
        raise DataError(f"{source}: no data rows")

    time = _parse_dates(df[date_col], source, str(date_col))
    cols: dict[str, np.ndarray] = {}
    for key, label in (("open", "Open"), ("high", "High"), ("low", "Low"), ("close", "Close"),
                       ("adjclose", "Adj Close"), ("volume", "Volume")):
        if key in by_norm:
            cols[key] = _numeric(df[by_norm[key]], source, label)

    for key, label in (("open", "Open"), ("high", "High"), ("low", "Low"), ("close", "Close"), ("adjclose", "Adj Close")):
        if key in cols:
            bad = np.flatnonzero(cols[key] <= 0)
            if bad.size:
                i = int(bad[0])
                raise DataError(f"{source}: row {_row(i)}, column {label}: price {cols[key][i]:g} is not > 0")
    if "volume" in cols:
        bad = np.flatnonzero(cols["volume"] < 0)
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{source}: row {_row(i)}, column Volume: {cols['volume'][i]:g} is negative")
    hi, lo, cl = cols["high"], cols["low"], cols["close"]
    bad = np.flatnonzero(hi < lo)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{source}: row {_row(i)}: High {hi[i]:g} < Low {lo[i]:g}")
    bad = np.flatnonzero((cl < lo) | (cl > hi))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{source}: row {_row(i)}: Close {cl[i]:g} outside [Low {lo[i]:g}, High {hi[i]:g}]")

    t = time.astype(np.int64)
    d = np.diff(t)
    dup = np.flatnonzero(d == 0)
    if dup.size:
        i = int(dup[0]) + 1
        raise DataError(f"{source}: row {_row(i)}: duplicate timestamp {_fmt_time(time[i])} (also row {_row(i - 1)})")
    back = np.flatnonzero(d < 0)
    if back.size:
        i = int(back[0]) + 1
        raise DataError(
            f"{source}: row {_row(i)}: timestamp {_fmt_time(time[i])} is earlier than the row before "
            f"({_fmt_time(time[i - 1])}); rows must be in time order"
        )
    out = OHLCV(time=time, open=cols["open"], high=hi, low=lo, close=cl, volume=cols.get("volume"),
                adj_close=cols.get("adjclose"), source=source)
    for arr in (out.time, out.open, out.high, out.low, out.close, out.volume, out.adj_close):
        if arr is not None:
            arr.setflags(write=False)
    return out


def _row(i: int) -> int:
    """File row number of data index ``i`` (1 = the header line, so data start at row 2)."""
    return i + 2


def _fmt_time(t: np.datetime64) -> str:
    ts = pd.Timestamp(t)
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.isoformat()


def _parse_dates(col: pd.Series, source: str, label: str) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col)
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        return parsed.to_numpy(dtype="datetime64[ns]")
    fast = _iso_dates(col)
    if fast is not None:
        return fast
    s = col.astype(str).str.strip()
    empty = np.flatnonzero((s == "").to_numpy())
    if empty.size:
        raise DataError(f"{source}: row {_row(int(empty[0]))}, column {label}: empty date")
    fmt = "%m/%d/%Y" if _US_DATE.match(s.iloc[0]) else "ISO8601"
    if fmt == "%m/%d/%Y" and s.str.contains(":").any():
        fmt = "mixed"  # US dates with intraday times
    try:
        parsed = pd.to_datetime(s, format=fmt, utc=True, dayfirst=False)
    except (ValueError, TypeError):
        # Find the first row that does not parse, to name it.
        for i, v in enumerate(s):
            try:
                pd.to_datetime(v, format=fmt if fmt != "mixed" else None, utc=True)
            except (ValueError, TypeError):
                raise DataError(
                    f"{source}: row {_row(i)}, column {label}: {v!r} is not a date "
                    "(allowed: ISO 1999-01-04[ 09:30[:00]] or US 1/4/1999)"
                ) from None
        raise DataError(f"{source}: column {label}: dates mix several formats") from None
    return parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _iso_dates(col: pd.Series) -> np.ndarray | None:
    """``datetime64[ns]`` when every cell is a plain ISO date or date-time without a zone, else None.

    Arrow's cast parses such text about eight times faster than ``pd.to_datetime`` (issue 13 item 9) and is strict:
    it refuses zones, spaces, US dates, impossible dates and years outside the nanosecond range, and where it
    accepts a cell it reads the same time as ``pd.to_datetime(format="ISO8601")``. Anything it refuses goes the
    general way, which also names a bad row.
    """
    import pyarrow as pa

    if not pd.api.types.is_string_dtype(col) or col.isna().any():
        return None
    try:
        return pa.array(col.array).cast(pa.timestamp("ns")).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


_NONFINITE_TEXT = {"nan": np.nan, "inf": np.inf, "+inf": np.inf, "infinity": np.inf, "-inf": -np.inf,
                   "-infinity": -np.inf}


def _numeric(col: pd.Series, source: str, label: str) -> np.ndarray:
    if _is_number_dtype(col.dtype):
        arr = col.to_numpy(dtype=np.float64)
    else:
        # Text: vectorised conversion; only the first bad cell is looked at one by one, to name it.
        s = col.astype(str).str.strip()
        conv = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, copy=True)
        failed = np.isnan(conv)
        if failed.any():
            lower = s.str.lower()
            special = lower.isin(list(_NONFINITE_TEXT)).to_numpy()
            bad = failed & ~special
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                v = s.iloc[i]
                what = "empty" if v == "" else f"{v!r} is not a number"
                raise DataError(f"{source}: row {_row(i)}, column {label}: {what}")
            conv[special] = lower[special].map(_NONFINITE_TEXT).to_numpy(dtype=np.float64)
        arr = conv
    nonfinite = np.flatnonzero(~np.isfinite(arr))
    if nonfinite.size:
        i = int(nonfinite[0])
        raise DataError(f"{source}: row {_row(i)}, column {label}: {arr[i]} (NaN/inf values are not allowed)")
    return arr


def save_ohlcv(data: OHLCV, path: str | Path) -> None:
    """Write a series as CSV (``.csv``) or Parquet (``.parquet``) in the layout :func:`load_ohlcv` reads."""
    p = Path(path)
    df = data.to_frame()
    if p.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(p, index=False)
    else:
        daily = bool((pd.DatetimeIndex(df["Date"]).normalize() == pd.DatetimeIndex(df["Date"])).all())
        df["Date"] = pd.DatetimeIndex(df["Date"]).strftime("%Y-%m-%d" if daily else "%Y-%m-%d %H:%M:%S")
        df.to_csv(p, index=False, float_format="%.6f")


# ------------------------------------------------------------------------------------------------ synthetic


def synth_market(
    n: int, *, seed: int = 0, start: str = "2000-01-03", freq: str = "B", price0: float = 100.0,
    ar: float = 0.0, drift: float = 0.0003,
) -> OHLCV:
    """A deterministic synthetic market: regime switching, GARCH(1,1) volatility clustering, Student-t shocks.

    Three hidden regimes (calm bull, choppy, stressed bear) follow a Markov chain; daily log returns are the
    regime's drift plus GARCH volatility times a unit-variance Student-t(4) shock. ``ar`` plants a learnable
    signal: returns get first-order autocorrelation ``ar`` (0 = none). Same ``seed``, same series.
    """
    if n < 2:
        raise DataError(f"synthetic market: n={n} is too short; need at least 2 bars")
    if not -1.0 < ar < 1.0:
        raise DataError(f"synthetic market: ar={ar} must be in (-1, 1)")
    rng = np.random.default_rng(seed)
    trans = np.array([[0.985, 0.012, 0.003], [0.02, 0.97, 0.01], [0.02, 0.03, 0.95]])
    mu = np.array([drift * 1.5, 0.0, -drift * 2.0])
    omega_scale = np.array([0.6, 1.0, 2.2])
    regime = 0
    var = 1e-4
    prev = 0.0
    nu = 4.0
    shocks = rng.standard_t(nu, size=n) / np.sqrt(nu / (nu - 2.0))
    u = rng.random(n)
    logret = np.empty(n)
    for i in range(n):
        regime = int(np.searchsorted(np.cumsum(trans[regime]), u[i]))
        regime = min(regime, 2)
        eps = np.sqrt(var) * shocks[i]
        r = mu[regime] + eps + ar * prev
        logret[i] = r
        prev = r - mu[regime]
        var = 2e-6 * omega_scale[regime] ** 2 + 0.08 * eps**2 + 0.9 * var
    logret[0] = 0.0
    close = price0 * np.exp(np.cumsum(logret))
    open_ = np.empty(n)
    open_[0] = price0
    gap = rng.normal(0.0, 0.002, size=n - 1)
    open_[1:] = close[:-1] * np.exp(gap)
    spread = np.abs(rng.normal(0.0, 0.006, size=(2, n))) * close
    high = np.maximum(open_, close) + spread[0]
    low = np.maximum(np.minimum(open_, close) - spread[1], 1e-6)
    volume = np.round(1e6 * np.exp(rng.normal(0.0, 0.3, size=n) + 20.0 * np.abs(logret)))
    rounded = [np.round(a, 6) for a in (open_, high, low, close)]
    open_, high, low, close = rounded
    # Rounding can push close a hair outside [low, high]; widen the bar, never move the close.
    high = np.maximum(high, np.maximum(open_, close))
    low = np.minimum(low, np.minimum(open_, close))
    time = pd.date_range(start=start, periods=n, freq=freq).to_numpy(dtype="datetime64[ns]")
    return OHLCV(time=time, open=open_, high=high, low=low, close=close, volume=volume, source=f"synth(seed={seed})")


# ---------------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Bar index ranges ``[start, stop)`` of the train, validation and test parts of one series."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    def part(self, name: str) -> tuple[int, int]:
        """The range of ``name`` (train, val or test)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split part {name!r} is not one of train, val, test")
        return getattr(self, name)


def chronological_split(
    data: OHLCV, *, train: float | str = 0.6, val: float | str = 0.2, warmup: int = 0, min_bars: int = 2,
) -> Split:
    """Split a series in time order into train / validation / test.

    ``train`` and ``val`` are fractions of the bars after ``warmup`` (the test part takes the rest) or ISO dates at
    which the next part begins. Each part must hold at least ``min_bars`` bars; otherwise :class:`DataError` says how
    many rows the file would need.
    """
    n = len(data)
    usable = n - warmup
    if isinstance(train, str) or isinstance(val, str):
        if not (isinstance(train, str) and isinstance(val, str)):
            raise DataError("split: give both split points as dates, or both as fractions")
        b1 = date_index(data, train, "train_end")
        b2 = date_index(data, val, "val_end")
        b1 = max(b1, warmup)
    else:
        for label, f in (("train", train), ("val", val)):
            if not 0.0 < f < 1.0:
                raise DataError(f"split: {label} fraction {f} must be in (0, 1)")
        if train + val >= 1.0:
            raise DataError(f"split: train {train} + val {val} must be < 1 so the test part is not empty")
        b1 = warmup + int(round(usable * train))
        b2 = warmup + int(round(usable * (train + val)))
    parts = {"train": (warmup, b1), "val": (b1, b2), "test": (b2, n)}
    for label, (a, b) in parts.items():
        if b - a < min_bars:
            hint = ""
            if isinstance(train, float) and isinstance(val, float):
                need = warmup + int(np.ceil(min_bars / min(train, val, 1.0 - train - val)))
                hint = f"; about {need} rows needed"
            raise DataError(
                f"{data.source}: too few rows for the window and the splits: {n} rows give the {label} part "
                f"{max(b - a, 0)} bars, fewer than the {min_bars} it needs (warm-up {warmup} bars{hint})"
            )
    return Split(train=parts["train"], val=parts["val"], test=parts["test"])


def date_index(data: OHLCV, date: str, label: str) -> int:
    """The first bar at or after ISO ``date`` (``len(data)`` when none is); ``label`` names it in the error."""
    try:
        t = np.datetime64(pd.Timestamp(date).to_datetime64(), "ns")
    except (ValueError, TypeError):
        raise DataError(f"split: {label} {date!r} is not a date (use ISO, e.g. 2015-01-01)") from None
    return int(np.searchsorted(data.time, t, side="left"))


def walk_forward_folds(
    n: int, *, n_folds: int, val_size: int, test_size: int, min_train: int, embargo: int = 0,
    expanding: bool = True, warmup: int = 0,
) -> list[Split]:
    """Walk-forward folds over ``n`` bars, the last fold ending at the last bar.

    Each fold trains on bars before its validation block (all of them if ``expanding``, else the last ``min_train``),
    leaves ``embargo`` bars between parts so that overlapping windows cannot leak, validates on ``val_size`` bars and
    tests on the ``test_size`` bars after. Consecutive folds' test blocks follow each other without overlap.
    """
    for label, v in (("n_folds", n_folds), ("val_size", val_size), ("test_size", test_size), ("min_train", min_train)):
        if v < 1:
            raise DataError(f"walk-forward: {label}={v} must be >= 1")
    if embargo < 0:
        raise DataError(f"walk-forward: embargo={embargo} must be >= 0")
    first_test = n - n_folds * test_size
    first_train_end = first_test - val_size - 2 * embargo
    if first_train_end - warmup < min_train:
        raise DataError(
            f"walk-forward: {n} bars are too few for {n_folds} folds of val {val_size} + test {test_size} with "
            f"min_train {min_train}, embargo {embargo}, warm-up {warmup}"
        )
    folds = []
    for k in range(n_folds):
        test_start = first_test + k * test_size
        val_start = test_start - embargo - val_size
        train_end = val_start - embargo
        train_start = warmup if expanding else max(warmup, train_end - min_train)
        folds.append(Split(train=(train_start, train_end), val=(val_start, val_start + val_size),
                           test=(test_start, test_start + test_size)))
    return folds


# ------------------------------------------------------------------------------------- null markets, real bars


def shuffle_days(data: OHLCV, *, seed: int) -> OHLCV:
    """The same days in a random order: a null market with no serial dependence (issue 11's calibration).

    Each day after the first is described relative to the previous close (open, high, low and close ratios; the
    adjusted close by its own day-on-day ratio; the volume as it was), and the days are put back in an order drawn
    with ``seed``, chained from the first close. Fat tails, drift, gaps and each day's range stay; every serial
    dependence (momentum, volatility clustering, regimes) goes. The timestamps stay where they were, and the last
    close equals the original one.
    """
    n = len(data)
    if n < 3:
        raise DataError(f"{data.source}: {n} bars are too few to shuffle; need at least 3")
    if seed < 0:
        raise DataError(f"shuffle: seed={seed} must be >= 0")
    order = np.random.default_rng(seed).permutation(n - 1) + 1  # original day of each new day 1 .. n-1

    def ratio(a: np.ndarray, base: np.ndarray) -> np.ndarray:
        return (a[1:] / base[:-1])[order - 1]

    # cumprod multiplies in sequence, so close[i] is exactly close[i-1] * ratio and every day's high, low and close
    # are the same previous close times ratios in the original order: low <= close <= high still holds.
    close = np.cumprod(np.concatenate([[data.close[0]], ratio(data.close, data.close)]))
    prev = close[:-1]

    def rebuild(a: np.ndarray) -> np.ndarray:
        return np.concatenate([[a[0]], prev * ratio(a, data.close)])

    adj = None
    if data.adj_close is not None:
        adj = np.cumprod(np.concatenate([[data.adj_close[0]], ratio(data.adj_close, data.adj_close)]))
    volume = None if data.volume is None else np.concatenate([[data.volume[0]], data.volume[order]])
    out = OHLCV(time=data.time.copy(), open=rebuild(data.open), high=rebuild(data.high), low=rebuild(data.low),
                close=close, volume=volume, adj_close=adj, source=f"{data.source} (days shuffled, seed {seed})")
    for arr in (out.time, out.open, out.high, out.low, out.close, out.volume, out.adj_close):
        if arr is not None:
            arr.setflags(write=False)
    return out


def sp500() -> OHLCV:
    """Real S&P 500 daily bars, 1999-01-04 to 2018-12-31 (5,031 bars, with Adj Close), bundled with ``arch``."""
    from arch.data import sp500 as bundled

    return frame_to_ohlcv(bundled.load().reset_index(), source="arch.data.sp500")


def output_file(path: str | Path, *, not_input: str | Path | None = None) -> Path:
    """Check that a price file can be written at ``path`` (.csv or .parquet, in an existing folder, not the input)."""
    p = Path(path)
    if p.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise DataError(f"{path}: unsupported output type {p.suffix or '(none)'!r}; allowed: .csv, .parquet")
    if not p.parent.is_dir():
        raise DataError(f"{path}: folder {p.parent} does not exist")
    if not_input is not None and p.resolve() == Path(not_input).resolve():
        raise DataError(f"{path}: is the input file; write to another file so the original is kept")
    return p
