"""Data for calibrating the verdict (issue 11): shuffled-day null markets and the real S&P 500 bars bundled with arch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dqlray.data import OHLCV, load_ohlcv, save_ohlcv, shuffle_days, sp500, synth_market
from dqlray.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def day_shape(d: OHLCV) -> np.ndarray:
    """Each day after the first relative to the previous close: (open, high, low, close) ratios, rows sorted."""
    prev = d.close[:-1]
    rows = np.stack([d.open[1:] / prev, d.high[1:] / prev, d.low[1:] / prev, d.close[1:] / prev], axis=1)
    key = np.round(rows, 9)  # sort on rounded values: a ratio rebuilt from a shuffled close may differ in the last bit
    return rows[np.lexsort(key.T[::-1])]


def sq_acf(d: OHLCV) -> float:
    r = np.diff(np.log(d.close))
    return float(np.corrcoef(r[1:] ** 2, r[:-1] ** 2)[0, 1])


def test_shuffle_days_keeps_every_day_and_removes_serial_dependence():
    d = sp500()  # real volatility clustering: squared daily returns are autocorrelated (about 0.2 at lag 1)
    s = shuffle_days(d, seed=3)
    assert np.array_equal(s.time, d.time) and s.close[0] == d.close[0]
    assert s.close[-1] == pytest.approx(d.close[-1], rel=1e-9)  # the same moves, so the same end
    np.testing.assert_allclose(day_shape(s), day_shape(d), rtol=1e-12)  # every day's bar, gap and range kept
    assert sorted(s.volume[1:]) == sorted(d.volume[1:])
    assert np.all((s.low <= s.close) & (s.close <= s.high) & (s.low <= s.open) & (s.open <= s.high))
    assert sq_acf(d) > 0.1 and abs(sq_acf(s)) < 0.05
    assert np.array_equal(shuffle_days(d, seed=3).close, s.close)  # same seed, same market
    assert not np.array_equal(shuffle_days(d, seed=4).close, s.close)
    assert "days shuffled, seed 3" in s.source


def test_shuffle_days_moves_adjusted_close_with_its_day(tmp_path):
    d = sp500().slice(0, 300)
    frame = d.to_frame()
    frame["Adj Close"] = frame["Close"] * np.linspace(0.9, 1.0, len(frame))  # dividends: adj differs from close
    path = tmp_path / "adj.csv"
    frame.to_csv(path, index=False)
    src = load_ohlcv(path)
    s = shuffle_days(src, seed=0)
    adj_moves = np.sort(src.adj_close[1:] / src.adj_close[:-1])
    np.testing.assert_allclose(np.sort(s.adj_close[1:] / s.adj_close[:-1]), adj_moves, rtol=1e-12)
    save_ohlcv(s, tmp_path / "s.csv")
    assert len(load_ohlcv(tmp_path / "s.csv")) == 300  # a valid file after the round trip


def test_shuffle_days_refuses_bad_input():
    with pytest.raises(DataError, match="2 bars are too few to shuffle; need at least 3"):
        shuffle_days(synth_market(2), seed=0)
    with pytest.raises(DataError, match="shuffle: seed=-1 must be >= 0"):
        shuffle_days(synth_market(10), seed=-1)


def test_sp500_bars():
    d = sp500()
    assert len(d) == 5031 and d.adj_close is not None and d.volume is not None
    assert str(d.time[0])[:10] == "1999-01-04" and str(d.time[-1])[:10] == "2018-12-31"
    assert d.source == "arch.data.sp500"


def dqlray(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "dqlray", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_data_sp500_and_shuffle_commands(tmp_path):
    out = tmp_path / "sp.csv"
    p = dqlray("data", "sp500", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "5031 S&P 500 daily bars" in p.stdout and len(load_ohlcv(out)) == 5031
    shuffled = tmp_path / "sp_s1.parquet"
    p = dqlray("data", "shuffle", str(out), "--seed", "1", "--out", str(shuffled))
    assert p.returncode == 0, p.stderr
    assert np.array_equal(load_ohlcv(shuffled).close, shuffle_days(load_ohlcv(out), seed=1).close)
    before = out.read_bytes()
    for args, message in (
        (["shuffle", str(out), "--out", str(out)], "is the input file; write to another file"),
        (["shuffle", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.csv")], "missing.csv: no such file"),
        (["shuffle", str(out), "--seed", "-2", "--out", str(tmp_path / "x.csv")], "seed=-2 must be >= 0"),
        (["shuffle", str(out), "--seed", "x", "--out", str(tmp_path / "x.csv")], "invalid int value: 'x'"),
        (["sp500", "--out", str(tmp_path / "no" / "x.csv")], "folder"),
        (["sp500", "--out", str(tmp_path / "x.txt")], "unsupported output type '.txt'; allowed: .csv, .parquet"),
    ):
        p = dqlray("data", *args)
        assert p.returncode == 2, (args, p.stderr)
        assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert out.read_bytes() == before  # nothing already saved is lost
