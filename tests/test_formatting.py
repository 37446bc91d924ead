"""One home for each small concern (issue 15, Glue): number formatting, JSON without NaN, the reports' escaping."""

import json

import numpy as np
from markupsafe import Markup

from dqlray.formatting import fmt, fmt_sd
from dqlray.metrics import finite_or_none
from dqlray.runinfo import json_ready, json_text, write_json


def test_terminal_table_text_is_unchanged():
    # The "Final Metrics" block formats through dqlray.formatting now; its text is what the old _fmt printed.
    from dqlray.workflow import HEADLINE, format_metrics_table

    means = [0.1234, -0.0567, 1.23456, float("nan"), -0.25, 3.5, 0.5, 1234.0, 10.0, 0.3]
    sds = [0.01, 0.02, 0.456, None, 0.1, 1.0, 0.05, 56.7, 2.0, 0.1]
    ev = {"agent": {"summary": {k: {"mean": m, "std": s} for k, m, s in zip(HEADLINE, means, sds, strict=True)}},
          "baselines": {"buy_and_hold": dict(zip(HEADLINE, [0.5, 0.1, 0.9, 1.1, -0.3, 0.33, 0.52, 1.0, 0.5, 1.0],
                                                 strict=True))}}
    lines = format_metrics_table(ev).splitlines()
    assert lines[2] == ("agent (mean±sd)           0.123±0.01   -0.057±0.02    1.235±0.46       nan±nan   -0.250±0.10 "
                        "   3.500±1.00    0.500±0.05       1234±57   10.000±2.00    0.300±0.10")
    assert lines[3] == ("buy_and_hold                   0.500         0.100         0.900         1.100        -0.300 "
                        "        0.330         0.520             1         0.500         1.000")


def test_one_formatter_typeset_and_plain():
    assert fmt(-0.0388, "pct") == "−3.9%" and fmt(-0.0388, "pct", plain=True) == "-3.9%"
    assert fmt(12345.0, "int") == "12,345" and fmt(12345.0, "int", plain=True) == "12345"
    assert fmt(-12.5, "pct") == "−1,250%" and fmt(-12.5, "pct", plain=True) == "-1250%"
    assert fmt(6.46642e-4, "sci") == "6.47e−4" and fmt(6.46642e-4, "sci", plain=True) == "6.47e-4"
    assert fmt(float("inf"), "ratio") == "–" and fmt(None, "float3", missing="nan") == "nan"
    assert fmt(True, "ratio") == "–" and fmt(True, "bool") == "yes"  # a bool is not a number
    assert fmt_sd(0.0702, "pct") == "± 7.0" and fmt_sd(float("nan"), "ratio") == ""


def test_finite_or_none_is_the_one_finiteness_check():
    assert finite_or_none(np.float32(1.5)) == 1.5 and finite_or_none("2") == 2.0
    for v in (None, float("nan"), float("inf"), "x", True, False):
        assert finite_or_none(v) is None, v
    import dqlray.report.format as report_format

    assert not hasattr(report_format, "finite")


def test_json_without_nan_is_one_function(tmp_path):
    obj = {"a": float("nan"), 1: [np.float32(0.5), np.int64(3), float("-inf"), (np.bool_(True), None)],
           "nested": {"x": np.float64("inf")}}
    assert json_ready(obj) == {"a": None, "1": [0.5, 3, None, [True, None]], "nested": {"x": None}}
    text = json_text(obj)
    assert json.loads(text) == json_ready(obj) and "NaN" not in text and "Infinity" not in text
    write_json(tmp_path / "x.json", obj)
    assert (tmp_path / "x.json").read_text() == text
    import dqlray.report.html as html

    assert not hasattr(html, "json_text")  # the reports write their JSON with runinfo's


def test_exit_resumable_has_one_home():
    import dqlray.cli
    import dqlray.tuning.sweep

    assert dqlray.tuning.sweep.EXIT_RESUMABLE is dqlray.cli.EXIT_RESUMABLE == 75


# ------------------------------------------------------------------------------------------------ HTML escaping

EVIL = '<script>alert("x")</script> & <b>bold</b>'


def test_every_inserted_value_is_text_unless_markup(tmp_path):
    from dqlray.report.html import Column, Document, Row, cards, figure, kv_table, note, render_table

    png = tmp_path / "p.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=(1, 1))
    plt.savefig(png)
    plt.close("all")
    parts = [
        figure(png, EVIL),
        note(EVIL, "warn", EVIL),
        cards([(EVIL, EVIL, EVIL)]),
        kv_table([(EVIL, EVIL)], EVIL),
        render_table(EVIL, [Column("k", EVIL, "text", help=EVIL)], [Row(EVIL, {"k": EVIL}, cls=EVIL, sub={"k": EVIL})]),
    ]
    for part in parts:
        assert isinstance(part, Markup)
        assert "<script>" not in part and "<b>" not in part, part
        assert "&lt;script&gt;" in part
    doc = Document("run", EVIL, [EVIL])
    doc.add("s", EVIL, lambda: Markup("").join(parts), lead=EVIL)
    doc.add("t", "raw", lambda: "<i>a plain string is text</i>")
    page = doc.render()
    assert "<script>alert" not in page and "<b>bold" not in page and "<i>a plain" not in page
    assert page.count("&lt;script&gt;") >= 10
    # Markup goes in as it is: that is how the report's own HTML is written
    assert note(Markup("<code>x</code>")) == '<div class="note warn" data-note="warn"><code>x</code></div>'
    assert 'alt="a caption"' in figure(png, Markup("a <b>caption</b>"))  # alt text: the caption's text


def test_html_in_names_shows_as_text_in_a_real_report(tmp_path):
    from dqlray.config import load_config
    from dqlray.data import save_ohlcv, synth_market
    from dqlray.report import build_run_report
    from dqlray.workflow import run_experiment

    folder = tmp_path / "<i>prices"
    folder.mkdir()
    save_ohlcv(synth_market(400, seed=4), folder / "<b>x.csv")
    cfg = load_config(None, {"data": {"data_file": str(folder / "<b>x.csv")}, "env": {"episode_length": 50},
                             "agent": {"learning_starts": 20, "buffer_size": 500},
                             "train": {"episodes": 1, "num_seeds": 1, "experiment_name": "<script>alert(1)<script>",
                                       "results_dir": str(tmp_path)}})
    out = run_experiment(cfg, progress=False, out=lambda s: None)
    page = build_run_report(out.run_dir).html.read_text()
    assert "<script>alert" not in page and "<b>x.csv" not in page and "<i>prices" not in page
    assert "&lt;script&gt;alert(1)&lt;script&gt;" in page and "&lt;b&gt;x.csv" in page
