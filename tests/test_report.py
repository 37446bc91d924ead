"""Reports from small real runs and a small real sweep: valid self-contained HTML, every embedded picture decodes, the
numbers in the tables equal the saved metrics, and a headless Chromium renders the pages without console errors."""

import base64
import csv
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data" / "test_small.csv")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SWEEP = {
    "data": {"data_file": DATA},
    "env": {"episode_length": 60},
    "agent": {"learning_starts": 50, "buffer_size": 2000},
    "train": {"episodes": 4, "num_seeds": 2, "checkpoint_every": 2},
    "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}, "agent.gamma": {"uniform": [0.5, 0.99]},
               "agent.hidden": {"choice": [[16, 16], [32, 32]]}},
    "sweep": {"search": "random", "num_samples": 4, "grace_period": 1, "reduction_factor": 2, "seed": 1},
}


# ------------------------------------------------------------------------------------------------------ fixtures


def _run(tmp: Path, name: str, **over) -> Path:
    from dqlray.config import load_config
    from dqlray.workflow import run_experiment

    cfg = {"data": {"data_file": DATA}, "env": {"episode_length": 80},
           "agent": {"learning_starts": 60, "buffer_size": 2000},
           "train": {"episodes": 3, "num_seeds": 3, "experiment_name": name, "results_dir": str(tmp)}}
    for sec, vals in over.items():
        cfg.setdefault(sec, {}).update(vals)
    outcome = run_experiment(load_config(None, cfg), progress=False, out=lambda s: None)
    return outcome.run_dir


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two single runs (different costs) and one sweep, made once for every test here."""
    tmp = tmp_path_factory.mktemp("reports")
    cfg = tmp / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(SWEEP))
    sweep = subprocess.Popen([sys.executable, str(ROOT / "tune_main.py"), "--config", str(cfg), "--experiment-name",
                              "sw", "--storage-path", str(tmp / "store"), "--no-dashboard"], cwd=tmp,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the runs train while Ray starts
        run_a = _run(tmp, "run_a")
        run_b = _run(tmp, "run_b", env={"fee_bps": 5.0}, train={"num_seeds": 2})
        out, _ = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-4000:]
    assert f"Report: {tmp / 'store' / 'sw' / 'report' / 'report.html'}" in out  # tune_main.py's own report
    return {"tmp": tmp, "run_a": run_a, "run_b": run_b, "sweep": tmp / "store" / "sw"}


@pytest.fixture(scope="module")
def run_report(folders):
    from dqlray.report import build_report

    return build_report(folders["run_a"])


@pytest.fixture(scope="module")
def sweep_report(folders):
    from dqlray.report import build_report

    return build_report(folders["sweep"])


# -------------------------------------------------------------------------------------------------- HTML checks


class Page(HTMLParser):
    """Checks that tags balance and collects images, links, table cells and notes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.images: list[dict] = []
        self.urls: list[str] = []
        self.cells: list[dict] = []  # every <td> with data-key: its attributes, table, row and text
        self.notes: list[tuple[str, str]] = []
        self.rows: dict[str, list[dict]] = {}  # table -> rows in order (attributes)
        self.headers: dict[str, list[str]] = {}
        self._table: list[str] = []
        self._row: dict | None = None
        self._cell: dict | None = None
        self._note: list | None = None
        self._depth_note = 0
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if tag == "img":
            self.images.append(a)
        if tag == "table":
            self._table.append(a.get("data-table", ""))
            self.rows.setdefault(self._table[-1], [])
            self.headers.setdefault(self._table[-1], [])
        if tag == "th" and self._table and "data-key" in a:
            self.headers[self._table[-1]].append(a["data-key"])
        if tag == "tr" and self._table:
            self._row = a
            if "data-row" in a:
                self.rows[self._table[-1]].append(a)
        if tag == "td" and "data-key" in a:
            self._cell = {**a, "table": self._table[-1] if self._table else "", "row": (self._row or {}).get("data-row"),
                          "text": ""}
        if tag == "div" and "data-note" in a:
            self._note = [a["data-note"], ""]
            self._depth_note = len(self.stack)
        if tag not in VOID:
            self.stack.append((tag, self.getpos()[0]))

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID:
            self.errors.append(f"self-closed <{tag}/>")
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> at line {self.getpos()[0]} closes {self.stack[-1] if self.stack else None}")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None
        if tag == "table":
            self._table.pop()
        if tag == "div" and self._note is not None and len(self.stack) == self._depth_note:
            self.notes.append(tuple(self._note))
            self._note = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._note is not None:
            self._note[1] += data

    def table(self, name: str) -> dict[tuple[str, str], dict]:
        return {(c["row"], c["data-key"]): c for c in self.cells if c["table"] == name}


def other_warnings(page: Page) -> list[str]:
    """The page's warning notes other than the verdict's (which warns when the agent does not beat its benchmark)."""
    return [t for k, t in page.notes if k == "warn" and not t.startswith("Does not beat ")]


def png_dims(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_page(path: Path) -> Page:
    """Balanced tags, self-contained (no URL but embedded PNGs and in-page anchors), every picture decodes."""
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    page = Page(text)
    assert page.errors == []
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert page.images, "no picture"
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        w, h = png_dims(data)
        assert w >= 600 and h >= 150
        assert int(img["width"]) > 0 and int(img["height"]) > 0
    for u in page.urls:
        assert u.startswith(("data:image/png;base64,", "#")), u
    assert not re.search(r"https?://", text.replace("http-equiv", "")), "an external URL in a self-contained report"
    return page


def shown_number(text: str) -> float:
    """The first number in a cell's text ("−3.9%± 2.3" -> -3.9)."""
    m = re.search(r"[-−]?[\d,]+(\.\d+)?(e[-−]?\d+)?", text)
    assert m, text
    return float(m.group(0).replace("−", "-").replace(",", ""))


def assert_cell(cell: dict, value, sd=None) -> None:
    """The exact value in data-value, and the rounded text agrees with it."""
    from dqlray.report.format import METRICS

    assert float(cell["data-value"]) == float(value), (cell, value)
    if sd is not None:
        assert float(cell["data-sd"]) == float(sd), (cell, sd)
    kind = METRICS[cell["data-key"]].kind if cell["data-key"] in METRICS else None
    if kind is not None:
        shown = shown_number(cell["text"])
        expect = value * 100 if kind == "pct" else value
        tol = {"pct": 0.051, "ratio": 0.0051, "int": 0.51, "float1": 0.051}[kind]
        assert abs(shown - expect) <= tol, (cell, value)


def check_metrics_table(page: Page, name: str, evaluation: dict) -> None:
    from dqlray.report.format import METRICS

    cells = page.table(name)
    summ = evaluation["agent"]["summary"]
    for k in METRICS:
        assert_cell(cells[("agent", k)], summ[k]["mean"], summ[k]["std"])
        for i, m in enumerate(evaluation["agent"]["per_seed"]):
            assert_cell(cells[(f"agent_seed{i}", k)], m[k])
        for b, m in evaluation["baselines"].items():
            assert_cell(cells[(b, k)], m[k])
    n_rows = 1 + len(evaluation["agent"]["per_seed"]) + len(evaluation["baselines"])
    assert len(page.rows[name]) == n_rows


# ------------------------------------------------------------------------------------------------------- tests


def test_format_numbers():
    from dqlray.formatting import fmt, fmt_sd
    from dqlray.report.format import metric_label, pretty_name

    assert fmt(0.1571, "pct") == "15.7%" and fmt(-0.0388, "pct") == "−3.9%"
    assert fmt(0.6257, "ratio") == "0.63" and fmt(-1.1349, "ratio") == "−1.13"
    assert fmt(0.000646642, "sci") == "6.47e−4" and fmt(0.00999999, "sci") == "1.00e−2"
    assert fmt(58.25, "int") == "58" and fmt(float("nan"), "ratio") == "–" and fmt(None, "pct") == "–"
    assert fmt_sd(0.0702, "pct") == "± 7.0" and fmt_sd(None, "ratio") == ""
    assert fmt("True", "bool") == "yes" and pretty_name("buy_and_hold") == "buy & hold"
    assert pretty_name("linear_probe") == "linear probe"
    assert metric_label("val_sharpe") == "validation Sharpe"


def test_importance_fallback_and_optuna(monkeypatch):
    from dqlray.report import importance
    from dqlray.report.importance import param_importance

    rng = __import__("numpy").random.default_rng(0)
    n = 24
    lr = 10 ** rng.uniform(-4, -2, n)
    hidden = rng.choice(["[16, 16]", "[32, 32]"], n)
    noise = rng.uniform(0.5, 0.99, n)
    df = pd.DataFrame({"trial_id": range(n), "agent.learning_rate": lr, "agent.hidden": hidden, "agent.gamma": noise,
                       "val_sharpe": 2 * (pd.Series(lr).map(math.log10) + 3) + rng.normal(0, 0.05, n)})
    space = {"agent.learning_rate": "loguniform [0.0001, 0.01]", "agent.hidden": "choice [[16, 16], [32, 32]]",
             "agent.gamma": "uniform [0.5, 0.99]"}
    imp = param_importance(df, list(space), "val_sharpe", space)
    assert imp.method != "none" and abs(sum(imp.values.values()) - 1) < 1e-9
    assert next(iter(imp.values)) == "agent.learning_rate", imp  # the one parameter that matters comes first
    few = param_importance(df.head(2), list(space), "val_sharpe", space)
    assert few.values == {} and "Not enough" in few.note

    def broken(*a, **k):
        raise RuntimeError("no")

    monkeypatch.setattr(importance, "_optuna", broken)
    simple = param_importance(df, list(space), "val_sharpe", space)
    assert simple.method == "rank correlation / correlation ratio" and "RuntimeError: no" in simple.note
    assert next(iter(simple.values)) == "agent.learning_rate" and abs(sum(simple.values.values()) - 1) < 1e-9


def test_run_report(folders, run_report):
    rd = folders["run_a"]
    assert run_report.kind == "run" and run_report.warnings == ()
    assert run_report.html == rd / "report" / "report.html"
    assert run_report.equity_png == rd / "report" / "equity_test.png"
    for name in ("equity_test", "equity_val", "drawdown_test", "positions_test", "training"):
        png_dims(run_report.images[name].read_bytes())
    page = check_page(run_report.html)
    assert {i["alt"] for i in page.images} >= {"test equity curves", "validation equity curves", "drawdown",
                                               "positions and trades", "training curves"}
    ev = json.loads((rd / "eval.json").read_text())
    check_metrics_table(page, "metrics_test", ev)
    meta = json.loads((rd / "meta.json").read_text())
    prov = {c["data-key"]: c["text"] for c in page.cells if c["table"] == "provenance"}
    assert prov["data hash"] == meta["data_hash"] and prov["git commit"] == meta["git_commit"]
    assert {c["data-key"] for c in page.cells if c["table"] == "versions"} >= {"python", "torch", "numpy"}
    # the verdict of eval.json is the summary's note (a warning when the agent does not beat buy-and-hold, issue 11)
    v = json.loads((folders["run_a"] / "eval.json").read_text())["verdict"]
    verdict_notes = [n for n in page.notes if v["statement"] in n[1]]
    assert len(verdict_notes) == 1 and verdict_notes[0][0] == ("info" if v["beats_benchmark"] else "warn")
    # the price file was found: no other warning
    assert [n for n in page.notes if n[0] in ("error", "warn") and n not in verdict_notes] == []
    # the tables are also saved as CSV/JSON with the same numbers
    saved = pd.read_csv(run_report.tables["metrics_test"]).set_index("row")
    assert saved.loc["agent", "sharpe"] == ev["agent"]["summary"]["sharpe"]["mean"]
    assert saved.loc["agent", "sharpe_sd"] == ev["agent"]["summary"]["sharpe"]["std"]
    assert saved.loc["buy_and_hold", "max_drawdown"] == ev["baselines"]["buy_and_hold"]["max_drawdown"]
    assert json.loads((rd / "report" / "metrics_test.json").read_text())[0]["row"] == "agent"
    # the validation table is recomputed from saved curves: the same recomputation on test matches eval.json
    from dqlray.report.folders import load_run
    from dqlray.report.tables import metrics_from_curves

    run = load_run(rd)
    again = metrics_from_curves(run.equity["test"], run.positions["test"], 252)
    for k, v in ev["baselines"]["buy_and_hold"].items():
        assert again["baselines"]["buy_and_hold"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    for k, v in ev["agent"]["summary"].items():
        assert again["agent"]["summary"][k]["mean"] == pytest.approx(v["mean"], rel=1e-5, abs=1e-7), k
    assert len(page.rows["metrics_val"]) == 1 + len(ev["baselines"])
    # TensorBoard logs of the training curves, readable as TensorFlow Event protocol buffers
    (events,) = (rd / "tensorboard").glob("events.out.tfevents.*")
    check_tensorboard(events, pd.read_csv(rd / "metrics.csv"))


def check_tensorboard(path: Path, metrics: pd.DataFrame) -> None:
    from dqlray.report.tensorboard import crc32c

    data = path.read_bytes()
    records, i = [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        records.append(data[i + 12:i + 12 + n])
        i += 12 + n + 4
    assert i == len(data) and len(records) > 1
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:
        return
    events = [Event.FromString(r) for r in records]
    assert events[0].file_version == "brain.Event:2"
    got = {(e.summary.value[0].tag, e.step): e.summary.value[0].simple_value for e in events[1:]}
    for _, row in metrics.iterrows():
        assert got[("validation/val_sharpe", int(row["episodes"]))] == pytest.approx(row["val_sharpe"], rel=1e-6)
        assert got[("train/epsilon", int(row["episodes"]))] == pytest.approx(row["epsilon"], rel=1e-6)


def test_run_report_price_file_fallbacks(folders, tmp_path, monkeypatch):
    from dqlray.report import build_run_report

    copy = tmp_path / "moved"
    shutil.copytree(folders["run_a"], copy, ignore=shutil.ignore_patterns("checkpoints", "report", "tensorboard"))
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["data"]["data_file"] = "data/test_small.csv"  # relative, as typed at the command line
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(ROOT)  # found relative to the current folder
    rep = build_run_report(copy, tensorboard=False)
    assert other_warnings(check_page(rep.html)) == []
    monkeypatch.chdir(tmp_path)  # not found: the price panel is left out, with a note, and nothing else fails
    rep = build_run_report(copy, tensorboard=False)
    page = check_page(rep.html)
    assert rep.warnings == ()
    warns = other_warnings(page)
    assert len(warns) == 1 and "data/test_small.csv was not found" in warns[0] and "price panel is omitted" in warns[0]
    assert rep.images["positions_test"].exists()


def test_run_report_of_unfinished_run(folders, tmp_path):
    from dqlray.report import build_run_report

    copy = tmp_path / "unfinished"
    shutil.copytree(folders["run_a"], copy, ignore=shutil.ignore_patterns("checkpoints", "report", "eval.json",
                                                                          "equity_*", "positions_*", "tensorboard"))
    rep = build_run_report(copy, tensorboard=False)
    page = check_page(rep.html)
    assert rep.warnings == () and rep.equity_png is None and "training" in rep.images
    assert any("no test evaluation yet" in t for k, t in page.notes if k == "info")


def test_sweep_report(folders, sweep_report):
    exp = folders["sweep"]
    assert sweep_report.kind == "sweep" and sweep_report.warnings == ()
    assert sweep_report.equity_png == exp / "report" / "equity_test.png"
    page = check_page(sweep_report.html)
    assert {"rungs", "params", "importance", "equity_test", "drawdown_test"} <= set(sweep_report.images)
    summary = json.loads((exp / "summary.json").read_text())
    check_metrics_table(page, "metrics_test", summary["test"])
    # every cell of the configurations table equals trials.csv (one row per configuration)
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    cells = page.table("trials")
    # every column, except the node on a single-node cluster and the error flag when no configuration failed
    assert page.headers["trials"] == [k for k in rows[0] if k not in ("node_ip", "error")]
    assert all(r["error"] == "False" for r in rows) and len({r["node_ip"] for r in rows}) == 1
    assert len(page.rows["trials"]) == len(rows) == SWEEP["sweep"]["num_samples"]
    for r in rows:
        for k, v in r.items():
            if k in ("node_ip", "error"):
                continue
            got = cells[(r["config_id"], k)]["data-value"]
            try:
                assert float(got) == float(v), (k, got, v)
            except ValueError:
                assert got == v, (k, got, v)
    best = [r for r in page.rows["trials"] if "best" in r.get("class", "")]
    assert [b["data-row"] for b in best] == [summary["best_trial"]]
    # the verdict: the statement of summary.json, its figures with the same labels as everywhere (issue 11)
    v = summary["verdict"]
    assert any(v["statement"] in text for _, text in page.notes)
    from dqlray.verdict import benchmark_label

    got = {c["data-key"]: c["text"] for c in page.cells if c["table"] == "verdict"}
    assert got[f"beats {benchmark_label(v['benchmark'])}"] == ("yes" if v["beats_benchmark"] else "no")
    assert float(got["p vs random timing"]) == pytest.approx(v["p_random"], abs=5e-4)
    assert "more likely skilled" not in sweep_report.html.read_text()
    # importance: one row per searched parameter that varied, shares summing to 1, saved as CSV
    imp = pd.read_csv(sweep_report.tables["importance"])
    assert set(imp["param"]) <= set(SWEEP["search"]) and abs(imp["importance"].sum() - 1) < 1e-9
    icells = page.table("importance")
    for _, r in imp.iterrows():
        assert float(icells[(r["param"], "importance")]["data-value"]) == pytest.approx(r["importance"], rel=1e-12)
    curves = pd.read_csv(sweep_report.tables["curves"])
    assert set(curves["config_id"].astype(str)) == {r["config_id"] for r in rows}


def test_comparison_report(folders, tmp_path):
    from dqlray.report import build_comparison_report

    out = tmp_path / "cmp" / "comparison.html"
    rep = build_comparison_report([folders["run_a"], folders["run_b"], folders["sweep"]], out)
    assert rep.kind == "comparison" and rep.warnings == () and rep.html == out
    assert rep.equity_png == tmp_path / "cmp" / "comparison_files" / "equity_test.png"
    page = check_page(out)
    warns = [t for k, t in page.notes if k == "warn"]
    assert len(warns) == 1 and "not evaluated on the same costs" in warns[0] and "6.0 bps" in warns[0]
    mism = [c for c in page.cells if c["table"] == "provenance" and "mismatch" in c.get("class", "")]
    assert {c["data-key"] for c in mism} == {"costs_bps"}
    cells = page.table("comparison")
    evs = {"run_a": json.loads((folders["run_a"] / "eval.json").read_text()),
           "run_b": json.loads((folders["run_b"] / "eval.json").read_text()),
           "sw": json.loads((folders["sweep"] / "summary.json").read_text())["test"]}
    from dqlray.report.compare import SHOWN

    for label, ev in evs.items():
        for k in SHOWN:
            assert_cell(cells[(label, k)], ev["agent"]["summary"][k]["mean"], ev["agent"]["summary"][k]["std"])
        assert float(cells[(label, "bh_sharpe")]["data-value"]) == ev["baselines"]["buy_and_hold"]["sharpe"]
        assert int(cells[(label, "seeds")]["data-value"]) == len(ev["agent"]["per_seed"])
    # each one's verdict (issue 11); the search check only for the sweep
    verdicts = {"run_a": evs["run_a"]["verdict"], "run_b": evs["run_b"]["verdict"],
                "sw": json.loads((folders["sweep"] / "summary.json").read_text())["verdict"]}
    for label, v in verdicts.items():
        assert cells[(label, "verdict")]["text"] == ("beats" if v["beats_benchmark"] else "does not beat") + \
            " buy-and-hold"
        assert float(cells[(label, "p_random")]["data-value"]) == v["p_random"]
        assert v["statement"] in out.read_text()
    assert float(cells[("sw", "dsr_active")]["data-value"]) == verdicts["sw"]["dsr_active"]
    assert cells[("run_a", "dsr_active")]["data-value"] == "" and cells[("run_a", "pbo")]["data-value"] == ""
    saved = pd.read_csv(rep.tables["comparison"]).set_index("row")
    assert saved.loc["run_b", "costs_bps"] == 6.0 and saved.loc["run_a", "sharpe"] == \
        evs["run_a"]["agent"]["summary"]["sharpe"]["mean"]
    # the same data, period and costs: no warning
    same = build_comparison_report([folders["run_a"], folders["sweep"]], tmp_path / "same.html")
    notes = check_page(same.html).notes
    assert [k for k, _ in notes] == ["info"] and "Comparable." in notes[0][1]


def test_command_line(folders, tmp_path, capsys):
    from dqlray.cli import main

    p = subprocess.run([sys.executable, "-m", "dqlray", "report", str(folders["run_b"]), "--out-dir", str(tmp_path / "rb")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == f"Report: {tmp_path / 'rb' / 'report.html'}", p.stderr
    capsys.readouterr()
    assert main(["compare", str(folders["run_a"]), str(folders["run_b"]), "--out", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").exists() and (tmp_path / "c_files" / "equity_test.png").exists()
    assert capsys.readouterr().out.strip() == f"Report: {tmp_path / 'c.html'}"

    def error(*args):
        assert main(list(args)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert error("report", str(tmp_path / "missing")) == f"dqlray: error: {tmp_path / 'missing'}: no such folder"
    assert "neither a run folder" in error("report", str(tmp_path))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(folders["run_a"], unfinished, ignore=shutil.ignore_patterns("checkpoints", "report", "eval.json"))
    assert error("compare", str(unfinished)) == (f"dqlray: error: {unfinished}: no eval.json: the run has not been "
                                                 "evaluated on its test split yet")
    assert error("compare", str(folders["run_a"]), "--out", str(tmp_path / "c.txt")).endswith(
        "expected a file name ending in .html")


def test_compare_every_finished_experiment_in_a_results_dir(folders, tmp_path, capsys):
    # the guide: rsync results/ ./local_results/; python generate_comparison_report.py --results_dir ./local_results
    local = tmp_path / "local_results"
    local.mkdir()
    for name in ("run_a", "run_b"):
        shutil.copytree(folders[name], local / name, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(folders["sweep"], local / "sw", ignore=shutil.ignore_patterns("trial_*", "checkpoint*"))
    shutil.copytree(folders["run_a"], local / "unfinished", ignore=shutil.ignore_patterns("checkpoints", "eval.json"))
    (local / "notes").mkdir()  # neither a run nor a sweep: ignored
    p = subprocess.run([sys.executable, str(ROOT / "generate_comparison_report.py"), "--results_dir", "./local_results"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == f"warning: {Path('local_results') / 'unfinished'}: left out, not evaluated on its test split yet"
    assert p.stdout.strip() == "Report: comparison_report.html"
    page = check_page(tmp_path / "comparison_report.html")
    assert {c["row"] for c in page.cells if c["table"] == "comparison"} >= {"run_a", "run_b", "sw"}
    assert "unfinished" not in {c["row"] for c in page.cells if c["table"] == "comparison"}


# ----------------------------------------------------------------------------------------------------- Chromium


def chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI installs Debian's chromium package in .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--hide-scrollbars", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    # with --enable-logging=stderr Chromium logs every console message and uncaught error of the page as
    # `[...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)`; the reports log nothing, so any is an error
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
                   "<script>throw new Error('deliberate');</script></body></html>")
    p = chromium(bad.as_uri(), tmp_path, f"--screenshot={tmp_path / 'bad.png'}", "--window-size=400,300")
    msgs = console_messages(p.stderr)
    assert len(msgs) == 1 and "Uncaught Error: deliberate" in msgs[0], p.stderr[-2000:]


@pytest.mark.parametrize("which", ["run", "sweep", "comparison"])
def test_chromium_screenshot_without_console_errors(which, folders, run_report, sweep_report, tmp_path):
    if which == "comparison":
        from dqlray.report import build_comparison_report

        html = build_comparison_report([folders["run_a"], folders["run_b"], folders["sweep"]],
                                       tmp_path / "comparison.html").html
    else:
        html = (run_report if which == "run" else sweep_report).html
    shot = tmp_path / f"{which}.png"
    p = chromium(html.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert p.returncode == 0, p.stderr[-2000:]
    assert console_messages(p.stderr) == []
    assert png_dims(shot.read_bytes()) == (1280, 2000)
    keep = os.environ.get("DQLRAY_SCREENSHOTS")  # to look at them: DQLRAY_SCREENSHOTS=/some/dir pytest ...
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_trials_table_sorts_in_the_browser(sweep_report, tmp_path):
    # click the validation-Sharpe header twice (ascending, then descending) and write the row order into the page
    probe = ("<script>var t=document.querySelector('table[data-table=trials]');"
             "var th=t.querySelector('th[data-key=val_sharpe]');th.click();th.click();"
             "document.body.setAttribute('data-order',Array.prototype.map.call(t.tBodies[0].rows,"
             "function(r){return r.getAttribute('data-row');}).join(','));"
             "document.body.setAttribute('data-sort',th.getAttribute('aria-sort'));</script>")
    page = tmp_path / "probe.html"
    page.write_text(sweep_report.html.read_text().replace("</body>", probe + "</body>"))
    p = chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert console_messages(p.stderr) == [], p.stderr[-2000:]
    m = re.search(r'<body data-order="([^"]*)" data-sort="([^"]*)"', p.stdout)
    assert m, p.stdout[:500]
    trials = pd.read_csv(sweep_report.html.parents[1] / "trials.csv", dtype={"config_id": str})
    expected = trials.sort_values("val_sharpe", ascending=False, na_position="last")["config_id"].tolist()
    assert m.group(1).split(",") == expected and m.group(2) == "descending"
