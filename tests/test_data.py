"""Loading, validation (one clear message per malformed file class), splits and the data hash."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dqlray.data import (
    chronological_split,
    data_hash,
    load_ohlcv,
    save_ohlcv,
    synth_market,
    walk_forward_folds,
)
from dqlray.errors import DataError

GOOD = """Date,Open,High,Low,Close,Volume
2020-01-02,10,11,9,10.5,100
2020-01-03,10.5,11.5,10,11,120
2020-01-06,11,11.2,10.1,10.2,90
"""


def write(tmp_path: Path, text: str, name: str = "p.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_file_loads(tmp_path):
    d = load_ohlcv(write(tmp_path, GOOD))
    assert len(d) == 3
    assert d.close.tolist() == [10.5, 11, 10.2]
    assert str(d.time[2])[:10] == "2020-01-06"


def test_any_letter_case_us_dates_and_adj_close(tmp_path):
    text = "DATE,open,HIGH,low,Close,Adj Close,volume\n1/4/1999,10,11,9,10.5,5.25,1\n1/5/1999,10,11,9,10,5,1\n"
    d = load_ohlcv(write(tmp_path, text))
    assert str(d.time[0])[:10] == "1999-01-04"
    assert d.adj_close is not None and d.price.tolist() == [5.25, 5.0]


def test_intraday_timestamps(tmp_path):
    text = "timestamp,open,high,low,close,volume\n2024-03-01 09:30:00,1,1,1,1,0\n2024-03-01 09:35:00,1,2,1,2,0\n"
    d = load_ohlcv(write(tmp_path, text))
    assert (d.time[1] - d.time[0]).astype("timedelta64[m]").astype(int) == 5


def test_volume_is_optional(tmp_path):
    d = load_ohlcv(write(tmp_path, "Date,Open,High,Low,Close\n2020-01-02,1,1,1,1\n"))
    assert d.volume is None


def test_parquet_roundtrip_has_same_hash(tmp_path):
    d = synth_market(300, seed=3)
    save_ohlcv(d, tmp_path / "a.csv")
    save_ohlcv(d, tmp_path / "a.parquet")
    a, b = load_ohlcv(tmp_path / "a.csv"), load_ohlcv(tmp_path / "a.parquet")
    assert data_hash(a) == data_hash(b)
    assert data_hash(a) != data_hash(synth_market(300, seed=4))


@pytest.mark.parametrize(
    "text, message",
    [
        ("Date,Open,High,Close\n2020-01-02,1,1,1\n", r"p\.csv: missing column\(s\) Low; found Date, Open, High, Close"),
        ("Open,High,Low,Close\n1,1,1,1\n", r"p\.csv: missing column\(s\) Date"),
        (GOOD.replace("10.2,90", "abc,90"), r"p\.csv: row 4, column Close: 'abc' is not a number"),
        (GOOD.replace("10.2,90", ",90"), r"p\.csv: row 4, column Close: empty"),
        (GOOD.replace("10.2,90", "nan,90"), r"p\.csv: row 4, column Close: nan \(NaN/inf values are not allowed\)"),
        (GOOD.replace("11,120", "inf,120"), r"p\.csv: row 3, column Close: inf \(NaN/inf"),
        (GOOD.replace("2020-01-03,10.5", "2020-01-03,0"), r"p\.csv: row 3, column Open: price 0 is not > 0"),
        (GOOD.replace("10.5,11.5,10,11", "10.5,9,10,9.5"), r"p\.csv: row 3: High 9 < Low 10"),
        (GOOD.replace("10.5,11.5,10,11", "10.5,11.5,10,12"), r"p\.csv: row 3: Close 12 outside \[Low 10, High 11\.5\]"),
        (GOOD.replace("2020-01-06", "2020-01-03"), r"p\.csv: row 4: duplicate timestamp 2020-01-03 \(also row 3\)"),
        (GOOD.replace("2020-01-06", "2020-01-01"), r"p\.csv: row 4: timestamp 2020-01-01 is earlier than the row"),
        (GOOD.replace("2020-01-06", "tomorrow"), r"p\.csv: row 4, column Date: 'tomorrow' is not a date"),
        (GOOD.replace(",90", ",-5"), r"p\.csv: row 4, column Volume: -5 is negative"),
        ("Date,Open,High,Low,Close\n", r"p\.csv: no data rows"),
    ],
)
def test_malformed_files_have_their_own_message(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_ohlcv(write(tmp_path, text))


def test_too_few_rows_for_window_and_splits():
    d = synth_market(80, seed=0)
    expected = (r"too few rows for the window and the splits: 80 rows give the train part 14 bars, "
                r"fewer than the 16 it needs \(warm-up 57 bars; about 137 rows needed\)")
    with pytest.raises(DataError, match=expected):
        chronological_split(d, warmup=57, min_bars=16)


def test_unsupported_extension(tmp_path):
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'"):
        load_ohlcv(write(tmp_path, GOOD, "p.xlsx"))


def test_cli_error_is_one_line_without_traceback(tmp_path):
    bad = write(tmp_path, GOOD.replace("10.2,90", "abc,90"))
    proc = subprocess.run([sys.executable, "-m", "dqlray", "data", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "row 4, column Close: 'abc' is not a number" in lines[0]


def test_synthetic_market_is_deterministic_and_valid(tmp_path):
    a, b = synth_market(500, seed=11), synth_market(500, seed=11)
    assert np.array_equal(a.close, b.close)
    assert not np.array_equal(a.close, synth_market(500, seed=12).close)
    save_ohlcv(a, tmp_path / "s.csv")
    c = load_ohlcv(tmp_path / "s.csv")  # passes validation
    assert np.allclose(c.close, a.close)
    r = np.diff(np.log(synth_market(20000, seed=1).close))
    kurt = ((r - r.mean()) ** 4).mean() / r.var() ** 2
    assert kurt > 4  # fat tails
    sq = (r - r.mean()) ** 2
    assert np.corrcoef(sq[:-1], sq[1:])[0, 1] > 0.05  # volatility clustering


def test_planted_autocorrelation():
    r = np.diff(np.log(synth_market(20000, seed=2, ar=0.3).close))
    assert np.corrcoef(r[:-1], r[1:])[0, 1] > 0.2


def test_bundled_test_small_matches_generator():
    d = load_ohlcv(Path(__file__).resolve().parents[1] / "data" / "test_small.csv")
    assert len(d) == 2000
    assert np.allclose(d.close, synth_market(2000, seed=7).close, atol=1e-6)


def test_chronological_split_fractions_and_dates():
    d = synth_market(1000, seed=0)
    s = chronological_split(d, train=0.6, val=0.2, warmup=100)
    assert s.train == (100, 640) and s.val == (640, 820) and s.test == (820, 1000)
    dates = chronological_split(d, train=str(d.time[500])[:10], val=str(d.time[800])[:10], warmup=100)
    assert dates.train == (100, 500) and dates.val == (500, 800) and dates.test == (800, 1000)


def test_walk_forward_folds_do_not_overlap():
    folds = walk_forward_folds(1000, n_folds=3, val_size=100, test_size=100, min_train=200, embargo=5, warmup=50)
    for f in folds:
        assert f.train[1] + 5 == f.val[0] and f.val[1] + 5 == f.test[0]
        assert f.train[0] == 50
    assert [f.test for f in folds] == [(700, 800), (800, 900), (900, 1000)]
    with pytest.raises(DataError, match="too few"):
        walk_forward_folds(300, n_folds=3, val_size=100, test_size=100, min_train=200)


def test_stored_command_lines_hide_secrets():
    from dqlray.runinfo import safe_argv

    tok = "123456789:" + "A" * 35  # shaped like a bot token (built at run time)
    argv = ["train_single.py", "--telegram_token", tok, "--telegram-chat-id", "42", "--smtp-password=hunter22",
            "--experiment_name", "x", f"--set=note={tok}"]
    out = safe_argv(argv)
    assert tok not in " ".join(out) and "hunter22" not in " ".join(out)
    assert out[:3] == ["train_single.py", "--telegram_token", "<redacted>"]
    assert "--smtp-password=<redacted>" in out and "--experiment_name" in out and "x" in out
