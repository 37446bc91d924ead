"""Several runs or sweeps side by side (the guide's ``generate_comparison_report.py``): ``dqlray compare DIR...``.

Results are only comparable when they were evaluated on the same prices, the same test period and the same costs; the
report says so loudly when they were not (data hash, test dates, costs in bps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from dqlray.errors import DqlrayError
from dqlray.formatting import fmt
from dqlray.report import plots
from dqlray.report.folders import folder_kind, load_run, load_sweep, load_walk_forward
from dqlray.report.format import METRICS
from dqlray.report.html import Column, Document, Report, Row, figure, note, render_table, table_records
from dqlray.report.tables import save_table
from dqlray.runinfo import atomic_write_text
from dqlray.verdict import verdict_cells

SHOWN = ("sharpe", "total_return", "max_drawdown", "sortino", "calmar", "num_trades", "exposure")


@dataclass(frozen=True)
class Entry:
    """One experiment in a comparison: its test evaluation and what it was evaluated on."""

    label: str
    path: Path
    kind: str  # "run" or "sweep"
    evaluation: dict[str, Any]
    data_hash: str | None
    data_file: str | None
    costs_bps: float | None
    test_period: str | None  # "first date → last date" of the test curve
    equity: pd.DataFrame | None
    verdict: dict[str, Any] | None  # issue 11: whether it beats its benchmark (None: evaluated before verdicts)
    git_commit: str | None


def load_entry(path: str | Path, label: str | None = None) -> Entry:
    """A run folder or a sweep folder with its test evaluation (a one-line error when it has none)."""
    p = Path(path)
    kind = folder_kind(p)
    if kind == "run":
        run = load_run(p)
        if run.evaluation is None:
            raise DqlrayError(f"{p}: no eval.json: the run has not been evaluated on its test split yet")
        eq = run.equity.get("test")
        return Entry(label or run.name, p, "run", run.evaluation, run.meta.get("data_hash"), run.meta.get("data_file"),
                     run.evaluation.get("costs_bps", run.meta.get("costs_bps")), _period(eq), eq,
                     run.evaluation.get("verdict"), run.meta.get("git_commit"))
    wf = kind == "walk_forward"
    folder = load_walk_forward(p) if wf else load_sweep(p)
    s = folder.summary or {}
    if "test" not in s:
        raise DqlrayError(f"{p}: no summary.json: the walk-forward folds have not all finished and been stitched" if wf
                          else f"{p}: no summary.json with a test evaluation: the sweep has not completed")
    return Entry(label or folder.name, p, "walk-forward" if wf else "sweep", s["test"], s.get("data_hash"),
                 s.get("data_file"), s["test"].get("costs_bps"), _period(folder.equity), folder.equity,
                 s.get("verdict"), s.get("git_commit"))


def _period(eq: pd.DataFrame | None) -> str | None:
    if eq is None or not len(eq):
        return None
    return f"{eq['date'].iloc[0].date()} → {eq['date'].iloc[-1].date()}"


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, with the parent added where two names clash."""
    names = [p.resolve().name for p in paths]
    out = []
    for p, n in zip(paths, names, strict=True):
        out.append(f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n)
    if len(set(out)) < len(out):  # still clashing: number them
        out = [f"{n} ({i + 1})" for i, n in enumerate(out)]
    return out


def mismatches(entries: Sequence[Entry]) -> dict[str, dict[str, Any]]:
    """What differs between the entries' evaluations: ``{"data": {label: hash}, "costs": ..., "test period": ...}``."""
    out = {}
    for what, get in (("data", lambda e: e.data_hash), ("costs", lambda e: e.costs_bps),
                      ("test period", lambda e: e.test_period)):
        vals = {e.label: get(e) for e in entries}
        if len(set(map(str, vals.values()))) > 1:
            out[what] = vals
    return out


def build_comparison_report(dirs: Sequence[str | Path], out: str | Path | None = None, *,
                            title: str | None = None) -> Report:
    """Write a comparison of runs and sweeps to ``out`` (default ``comparison_report.html``) with its PNGs and tables.

    The pictures and the CSV/JSON table go to ``<out stem>_files/`` next to the HTML file.
    """
    if not dirs:
        raise DqlrayError("compare: give at least one run or sweep folder")
    paths = [Path(d) for d in dirs]
    entries = [load_entry(p, lab) for p, lab in zip(paths, _labels(paths), strict=True)]
    html_path = Path(out) if out is not None else Path("comparison_report.html")
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise DqlrayError(f"--out {html_path}: expected a file name ending in .html")
    assets = html_path.parent / f"{html_path.stem}_files"
    assets.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path] = {}
    tables: dict[str, Path] = {}
    diff = mismatches(entries)
    sub = [f"{len(entries)} experiments", "test split"]
    if diff:
        sub.append(Markup('<span class="down">not comparable: {} differ</span>').format(", ".join(diff)))
    doc = Document("comparison", title or "Comparison of " + ", ".join(e.label for e in entries), sub)
    doc.add("summary", "Summary", lambda: _summary(entries, diff))
    doc.add("equity", "Test equity", lambda: _equity(entries, diff, assets, images))
    doc.add("metrics", "Metrics", lambda: _metrics(entries, assets, images, tables))
    doc.add("provenance", "What each was evaluated on", lambda: _provenance(entries, diff))
    atomic_write_text(html_path, doc.render())
    return Report(html=html_path, equity_png=images.get("equity"), images=images, tables=tables,
                  warnings=tuple(doc.warnings), kind="comparison")


def _summary(entries: Sequence[Entry], diff: dict[str, dict[str, Any]]) -> Markup:
    html = []
    if diff:
        parts = []
        for what, vals in diff.items():
            unit = " bps" if what == "costs" else ""
            shown = Markup("; ").join(Markup("{}: <code>{}{}</code>").format(k, v if v is not None else "unknown", unit)
                                      for k, v in vals.items())
            parts.append(Markup("<li><strong>{}</strong> differ: {}</li>").format(what, shown))
        html.append(note(Markup("These results were <strong>not evaluated on the same {}</strong>, so their numbers are "
                                "not directly comparable: a different price series, test period or cost level alone "
                                "changes Sharpe and returns.<ul>{}</ul>").format(" / ".join(diff), Markup("").join(parts)),
                         "warn", "Not comparable."))
    else:
        html.append(note("All were evaluated on the same data (hash), the same test period and the same costs.",
                         "info", "Comparable."))
    ranked = sorted(entries, key=lambda e: -e.evaluation["agent"]["summary"]["sharpe"]["mean"])
    best = ranked[0]
    a = best.evaluation["agent"]["summary"]["sharpe"]
    html.append(Markup('<p class="lead">Highest mean test Sharpe: <strong>{}</strong> at {} ± {} over {} seeds. '
                       "Differences smaller than the spread across seeds are noise; whether an agent beats its "
                       "benchmark is each one's verdict:</p>").format(
        best.label, fmt(a["mean"], "ratio"), fmt(a["std"], "ratio"), len(best.evaluation["agent"]["per_seed"])))
    html.append(Markup("<ul>{}</ul>").format(Markup("").join(
        Markup("<li><code>{}</code>: {}</li>").format(e.label, (e.verdict or {}).get("statement")
                                                      or "no verdict (evaluated before dqlray kept one)")
        for e in entries)))
    return Markup("").join(html)


def _equity(entries: Sequence[Entry], diff: dict[str, Any], assets: Path, images: dict[str, Path]) -> Markup:
    series = [(e.label, e.equity["date"].to_numpy(), e.equity["agent_mean"].to_numpy(dtype=float))
              for e in entries if e.equity is not None and "agent_mean" in e.equity]
    if not series:
        return note(Markup("None of the folders has an <code>equity_test.csv</code>."), "info")
    refs = []
    seen = set()
    for e in entries:  # one buy & hold line per distinct test data and period
        if e.equity is None or "buy_and_hold" not in e.equity:
            continue
        key = (e.data_hash, e.test_period)
        if key in seen:
            continue
        seen.add(key)
        label = "buy & hold" if "data" not in diff and "test period" not in diff else f"buy & hold ({e.label})"
        refs.append((label, e.equity["date"].to_numpy(), e.equity["buy_and_hold"].to_numpy(dtype=float)))
    images["equity"] = plots.plot_compare_equity(series, refs, assets / "equity_test.png",
                                                 title="Test split: mean equity curve of each experiment")
    html = [figure(images["equity"], "The mean over seeds of each experiment's agent on its test split, with buy & "
                   "hold as the reference. Legend: total return.", alt="overlaid test equity curves")]
    labels = [e.label for e in entries]
    means = [e.evaluation["agent"]["summary"]["sharpe"]["mean"] for e in entries]
    sds = [e.evaluation["agent"]["summary"]["sharpe"]["std"] for e in entries]
    refs_s = [e.evaluation.get("baselines", {}).get("buy_and_hold", {}).get("sharpe") for e in entries]
    images["sharpe"] = plots.plot_compare_bars(labels, means, sds, refs_s, assets / "sharpe_test.png",
                                               title="Test Sharpe ratio, mean ± sd over seeds",
                                               xlabel="annualised Sharpe ratio (test split)")
    html.append(figure(images["sharpe"], "Bars: the agent's mean test Sharpe, whiskers one standard deviation across "
                       "seeds; black tick: buy & hold on the same split.", alt="test Sharpe by experiment"))
    return Markup("").join(html)


def _columns() -> list[Column]:
    cols = [Column("experiment", "Experiment", "text"), Column("kind", "Kind", "text"), Column("seeds", "Seeds", "int")]
    cols += [Column(k, METRICS[k].label, METRICS[k].kind, METRICS[k].help, METRICS[k].better) for k in SHOWN]
    cols += [Column("bh_sharpe", "B&H Sharpe", "ratio", "buy & hold on the same test split"),
             Column("bh_total_return", "B&H return", "pct", "buy & hold on the same test split"),
             Column("verdict", "Verdict", "text", "whether the agent beats its benchmark out of sample (issue 11): "
                    "both p-values at most the level"),
             Column("info_ratio", "IR", "ratio", "information ratio of the active returns against the benchmark, "
                    "annualised, mean over seeds"),
             Column("p_benchmark", "p bench", "float3", "check 1: bootstrap p-value of the information ratio"),
             Column("p_random", "p random", "float3", "check 2: rank among policies with the agent's exposure and "
                    "trades at random times"),
             Column("dsr_active", "DSR", "float3", "sweeps: deflated Sharpe of the winner's validation information "
                    "ratio against the best of N unskilled trials (warns below 0.95)"),
             Column("pbo", "PBO", "float3", "sweeps: probability of backtest overfitting (warns at 0.5 or more)")]
    return cols


def _metrics(entries: Sequence[Entry], assets: Path, images: dict[str, Path], tables: dict[str, Path]) -> Markup:
    cols = _columns()
    rows = []
    for e in entries:
        summ = e.evaluation["agent"]["summary"]
        bh = e.evaluation.get("baselines", {}).get("buy_and_hold", {})
        vals: dict[str, Any] = {"experiment": e.label, "kind": e.kind, "seeds": len(e.evaluation["agent"]["per_seed"]),
                                "bh_sharpe": bh.get("sharpe"), "bh_total_return": bh.get("total_return"),
                                **verdict_cells(e.verdict)}
        vals.update({k: summ[k]["mean"] for k in SHOWN if k in summ})
        rows.append(Row(e.label, vals, sd={k: summ[k]["std"] for k in SHOWN if k in summ}))
    records = table_records(cols, rows)
    for rec, e in zip(records, entries, strict=True):
        rec.update({"path": str(e.path.resolve()), "data_hash": e.data_hash, "data_file": e.data_file,
                    "costs_bps": e.costs_bps, "test_period": e.test_period, "git_commit": e.git_commit})
    save_table(assets, "comparison", records, tables)
    return (Markup('<p class="lead">Agent: mean ± standard deviation over seeds on each experiment\'s test split. '
                   "Best per column in green. Click a header to sort.</p>")
            + render_table("comparison", cols, rows, sortable=True))


def _short_commit(c: str | None) -> str:
    if not c:
        return ""
    sha, _, rest = c.partition("+")
    return sha[:12] + (f"+{rest}" if rest else "")


def _provenance(entries: Sequence[Entry], diff: dict[str, Any]) -> Markup:
    cols = [Column("experiment", "Experiment", "text"), Column("path", "Folder", "text"),
            Column("data_file", "Data file", "text"), Column("data_hash", "Data hash", "text"),
            Column("test_period", "Test period", "text"), Column("costs_bps", "Costs (bps)", "float1"),
            Column("git_commit", "Git commit", "text")]
    bad = {"data": "data_hash", "test period": "test_period", "costs": "costs_bps"}
    rows = []
    for e in entries:
        vals = {"experiment": e.label, "path": str(e.path), "data_file": e.data_file, "data_hash": e.data_hash,
                "test_period": e.test_period, "costs_bps": e.costs_bps, "git_commit": _short_commit(e.git_commit)}
        rows.append(Row(e.label, vals, compete=False, cell_cls={bad[k]: "mismatch" for k in diff}))
    return render_table("provenance", cols, rows)
