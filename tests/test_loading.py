"""Finding and loading price files: the guide's bare names, folders, and the vectorised loader (issues 13 and 15).

The loader reads numbers with pandas' C parser and dates with Arrow; the general way (``pd.to_datetime``, text
conversion) is kept for everything else. These tests pin that both ways give the same series, bit for bit, and that
a bad cell is still named by its row and column.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dqlray import data
from dqlray.data import data_hash, load_ohlcv, save_ohlcv, synth_market
from dqlray.errors import DataError

GOOD = "Date,Open,High,Low,Close,Volume\n2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,11.5,10,11,120\n"


def test_a_bare_name_is_found_in_data(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test_small.csv").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    d = load_ohlcv("test_small.csv")
    assert len(d) == 2 and d.source == os.path.join("data", "test_small.csv")
    (tmp_path / "test_small.csv").write_text(GOOD.replace("10.5,11.5,10,11", "10.5,11.5,10,11.25"))
    assert load_ohlcv("test_small.csv").close[-1] == 11.25  # the path as given comes first


def test_a_missing_file_names_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_ohlcv("nothere.csv")
    assert str(e.value) == (f"nothere.csv: no such file (looked for {tmp_path / 'nothere.csv'} and "
                            f"{tmp_path / 'data' / 'nothere.csv'})")
    with pytest.raises(DataError, match=r"^data/x\.csv: no such file \(looked for [^ ]*data/x\.csv\)$"):
        load_ohlcv("data/x.csv")  # not data/data/x.csv
    with pytest.raises(DataError, match=r"^/nowhere/x\.csv: no such file \(looked for /nowhere/x\.csv\)$"):
        load_ohlcv("/nowhere/x.csv")


def test_a_folder_is_a_directory_not_an_unsupported_type(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path}: is a directory, not a price file \(\.csv or \.parquet\)$"):
        load_ohlcv(tmp_path)


def test_data_check_finds_the_guides_bare_name(tmp_path):
    (tmp_path / "data").mkdir()
    save_ohlcv(synth_market(300, seed=1), tmp_path / "data" / "test_small.csv")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "dqlray", "data", "check", "test_small.csv"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{os.path.join('data', 'test_small.csv')}: OK, 300 bars")


@pytest.mark.parametrize("dates", [
    ["2020-01-02", "2020-01-03"],
    ["2020-01-02 09:30:00", "2020-01-02 09:31:00"],
    ["2020-01-02T09:30:00", "2020-01-02T09:31:00"],
    ["2020-01-02 09:30", "2020-01-02 09:31"],
    ["2020-01-02 09:30:00.250", "2020-01-02 09:30:00.500"],
    ["2020-01-02 09:30:00+01:00", "2020-01-02 09:31:00+01:00"],  # a zone: the general way (converted to UTC)
    ["2020-01-02 09:30:00Z", "2020-01-02 09:31:00Z"],
    ["20200102", "20200103"],  # read as numbers by the parser, re-read as text
    ["1/2/2020", "1/3/2020"],
    ["1/2/2020 09:30", "1/2/2020 09:31"],
    [" 2020-01-02", " 2020-01-03"],
    ["2300-01-02", "2300-01-03"],  # outside Arrow's nanosecond range: the general way decides
])
def test_fast_dates_equal_the_general_way(tmp_path, monkeypatch, dates):
    text = "Date,Open,High,Low,Close\n" + "".join(f"{d},10,11,9,10\n" for d in dates)
    p = tmp_path / "p.csv"
    p.write_text(text)
    fast = load_ohlcv(p).time
    monkeypatch.setattr(data, "_iso_dates", lambda col: None)  # the general way alone
    assert np.array_equal(fast, load_ohlcv(p).time)


def test_the_fast_way_takes_plain_iso_text_only():
    ok = pd.Series(["2020-01-02 09:30:00", "2020-01-02 09:31:00"])
    assert data._iso_dates(ok) is not None
    for cells in (["2020-01-02 09:30:00+01:00"], ["1/2/2020"], [" 2020-01-02"], ["2020-02-30"], ["2300-01-02"],
                  ["2020-01-02", None]):
        assert data._iso_dates(pd.Series(cells, dtype="str")) is None, cells


def test_loaded_numbers_equal_pythons_float(tmp_path):
    rng = np.random.default_rng(0)
    close = np.exp(rng.normal(3, 2, 2000))
    text_close = [repr(float(v)) for v in close] + ["1e3", "  12.5 ", "+3", ".5", "5."]
    n = len(text_close)
    dates = pd.date_range("2001-01-01", periods=n, freq="D").strftime("%Y-%m-%d")
    lines = [f"{d},{c},{c},{c},{c},{i}" for i, (d, c) in enumerate(zip(dates, text_close, strict=True))]
    p = tmp_path / "p.csv"
    p.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(lines) + "\n")
    d = load_ohlcv(p)
    assert np.array_equal(d.close, np.array([float(v) for v in text_close]))
    assert np.array_equal(d.volume, np.arange(n, dtype=float))


def test_hash_of_the_bundled_file_is_unchanged():
    # The hash pins every parsed value; runs and sweeps store it, and evaluate_run refuses a different one.
    assert data_hash(load_ohlcv(Path(__file__).resolve().parents[1] / "data" / "test_small.csv")) == "28820aac0d33424a"


@pytest.mark.parametrize("cell, message", [
    ("True", r"row 3, column Close: 'True' is not a number"),  # not read as a boolean 1.0
    ("NA", r"row 3, column Close: 'NA' is not a number"),
    ("null", r"row 3, column Close: 'null' is not a number"),
    ("-nan", r"row 3, column Close: '-nan' is not a number"),
    ("1_000", r"row 3, column Close: '1_000' is not a number"),
    ("Infinity", r"row 3, column Close: inf \(NaN/inf values are not allowed\)"),
    ("-inf", r"row 3, column Close: -inf \(NaN/inf values are not allowed\)"),
    ("1e999", r"row 3, column Close: inf \(NaN/inf values are not allowed\)"),
])
def test_bad_cells_are_named(tmp_path, cell, message):
    p = tmp_path / "p.csv"
    p.write_text(GOOD.replace("10.5,11.5,10,11,", f"10.5,11.5,10,{cell},"))
    with pytest.raises(DataError, match=message):
        load_ohlcv(p)


def test_a_column_of_booleans_is_not_numbers(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("Date,Open,High,Low,Close\n2020-01-02,1,1,1,TRUE\n2020-01-03,1,1,1,FALSE\n")
    with pytest.raises(DataError, match=r"row 2, column Close: 'TRUE' is not a number"):
        load_ohlcv(p)


def test_a_bad_cell_deep_in_a_large_file_is_named(tmp_path):
    d = synth_market(50_000, seed=2, freq="min")
    p = tmp_path / "big.csv"
    save_ohlcv(d, p)
    lines = p.read_text().splitlines()
    fields = lines[40_001].split(",")
    fields[4] = "x1"
    lines[40_001] = ",".join(fields)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"big\.csv: row 40002, column Close: 'x1' is not a number"):
        load_ohlcv(p)
