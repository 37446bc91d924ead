"""The walk-forward report: ``dqlray report <walk-forward dir>`` and the end of ``--walk-forward`` runs and sweeps.

It shows the verdict on the stitched test series, the stitched equity curve with the folds' boundaries, and each
fold's parts, winner, winning configuration and own verdict (issue 11).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from markupsafe import Markup

from dqlray.formatting import fmt
from dqlray.report import plots
from dqlray.report.folders import WalkForwardFolder, load_walk_forward, report_dir
from dqlray.report.format import param_label
from dqlray.report.html import Column, Document, Report, Row, cards, figure, kv_table, note, render_table, table_records
from dqlray.report.tables import evaluation_rows, mean_sd_html, metric_columns, save_table, versus
from dqlray.report.verdict import verdict_card, verdict_details, verdict_note
from dqlray.runinfo import atomic_write_text
from dqlray.verdict import benchmark_label


def build_walk_forward_report(exp_dir: str | Path, out_dir: str | Path | None = None) -> Report:
    """Write ``<exp_dir>/report/report.html`` (self-contained) with its PNGs and CSV/JSON tables; return the paths."""
    wf = load_walk_forward(exp_dir)
    out = report_dir(wf.path, out_dir)
    images: dict[str, Path] = {}
    tables: dict[str, Path] = {}
    folds = wf.plan.get("folds") or []
    sub = [f"{len(folds)} folds", "each tuned on its own past" if wf.tuned else "each trained on its own past"]
    data_file = wf.plan.get("data_file") or (wf.plan.get("base_config") or {}).get("data", {}).get("data_file")
    if data_file:
        sub.append(Markup("<code>{}</code>").format(data_file))
    doc = Document("walk-forward", wf.name, sub)
    if wf.summary is None:
        done = [f["fold"] for f in folds if _fold_done(wf, f["fold"])]
        doc.add("summary", "Summary", lambda: note(Markup(
            "Not every fold has finished ({} of {}: {}), so the test blocks are not stitched yet. Continue with "
            "<code>--resume</code>.").format(len(done), len(folds), ", ".join(map(str, done)) or "none"), "info"))
    else:
        doc.add("summary", "Summary", lambda: _summary(wf))
        if wf.equity is not None:
            doc.add("equity", "Stitched test equity", lambda: _equity(wf, out, images))
        doc.add("metrics", "Metrics", lambda: _metrics(wf, out, tables))
    doc.add("folds", "Folds", lambda: _folds(wf, out, tables))
    doc.add("reproduce", "Configuration and provenance", lambda: _provenance(wf))
    html_path = out / "report.html"
    atomic_write_text(html_path, doc.render())
    return Report(html=html_path, equity_png=images.get("equity_test"), images=images, tables=tables,
                  warnings=tuple(doc.warnings), kind="walk_forward")


def _fold_done(wf: WalkForwardFolder, fold: int) -> bool:
    d = wf.path / f"fold_{fold}"
    return (d / ("summary.json" if wf.tuned else "eval.json")).exists()


def _summary(wf: WalkForwardFolder) -> Markup:
    s = wf.summary or {}
    ev = s["test"]
    v = s.get("verdict")
    a = ev["agent"]["summary"]
    bench = (v or {}).get("benchmark", "buy_and_hold")
    ref = ev["baselines"].get(bench, {})
    name = benchmark_label(bench)
    items = [c for c in [verdict_card(v)] if c]
    items += [("Stitched test Sharpe", mean_sd_html(a["sharpe"]["mean"], a["sharpe"]["std"], "ratio"),
               versus(a["sharpe"]["mean"], ref.get("sharpe"), "ratio", name)),
              ("Stitched test return", mean_sd_html(a["total_return"]["mean"], a["total_return"]["std"], "pct"),
               versus(a["total_return"]["mean"], ref.get("total_return"), "pct", name))]
    segs = s.get("segments") or []
    lead = Markup('<p class="lead" style="margin-top:14px">{} folds in time order, each {} on its own past only and '
                  "tested once on its own test block; the {} test blocks ({} bars) are stitched into one "
                  "out-of-sample record and compared with {} over the same bars. Checks 1 and 2 of the verdict run on "
                  "the stitched series (each block starting flat); each fold keeps its own search check.</p>").format(
        len(segs), "tuned" if wf.tuned else "trained", len(segs), (v or {}).get("bars", "?"), name)
    return cards(items) + verdict_note(v) + lead + verdict_details(v)


def _equity(wf: WalkForwardFolder, out: Path, images: dict[str, Path]) -> Markup:
    eq = wf.equity
    assert eq is not None
    segs = (wf.summary or {}).get("segments") or []
    starts = [eq["date"].iloc[i] for i in segs[1:]]
    images["equity_test"] = plots.plot_equity(eq, out / "equity_test.png", title=f"Stitched test blocks: equity · "
                                              f"{wf.name}", boundaries=starts)
    return figure(images["equity_test"], "The folds' test blocks one after the other: each fold's agent (seeds thin, "
                  "their mean bold) and every baseline, each block starting flat with the costs of entering. Dotted: "
                  "where the next fold's test block begins. Legend: total return.", alt="stitched test equity")


def _metrics(wf: WalkForwardFolder, out: Path, tables: dict[str, Path]) -> Markup:
    ev = (wf.summary or {})["test"]
    cols = metric_columns()
    rows = evaluation_rows(ev)
    save_table(out, "metrics_test", table_records(cols, rows), tables)
    return (Markup("<h3>Stitched test blocks <small>(costs {} bps)</small></h3>").format(fmt(ev.get("costs_bps"),
                                                                                               "float1"))
            + render_table("metrics_test", cols, rows))


def _folds(wf: WalkForwardFolder, out: Path, tables: dict[str, Path]) -> Markup:
    plan = wf.plan.get("folds") or []
    done = {f["fold"]: f for f in (wf.summary or {}).get("folds", [])}
    cols = [Column("fold", "Fold", "int"), Column("train", "Train", "text"), Column("val", "Validation", "text"),
            Column("test", "Test", "text"), Column("winner", "Winner" if wf.tuned else "Model", "text"),
            Column("test_sharpe", "Test Sharpe", "ratio", "the fold's agent on its test block, mean over seeds"),
            Column("benchmark_sharpe", "Benchmark Sharpe", "ratio", "the benchmark on the same test block"),
            Column("verdict", "Fold verdict", "text", "the fold's own verdict on its test block alone"),
            Column("dsr_active", "DSR", "float3", "deflated Sharpe of the fold's winner's validation information ratio"),
            Column("pbo", "PBO", "float3", "the fold's probability of backtest overfitting")]
    rows = []
    configs = []
    for p in plan:
        i = p["fold"]
        f = done.get(i, {})
        v = f.get("verdict") or {}
        verdict = None
        if "beats_benchmark" in v:
            verdict = "beats" if v["beats_benchmark"] else "does not beat"
        rows.append(Row(str(i), {
            "fold": i, "train": " → ".join(p["train"]["dates"]), "val": " → ".join(p["val"]["dates"]),
            "test": " → ".join(p["test"]["dates"]),
            "winner": f.get("best_trial") or (Path(f["model_path"]).name if f.get("model_path") else
                                             ("done" if _fold_done(wf, i) else "not finished")),
            "test_sharpe": f.get("test_sharpe"), "benchmark_sharpe": f.get("benchmark_sharpe"), "verdict": verdict,
            "dsr_active": v.get("dsr_active"), "pbo": v.get("pbo")}, compete=False))
        params = f.get("best_params")
        if params:
            configs.append(Markup("<div><h3>Fold {} winner <code>{}</code></h3>{}</div>").format(
                i, f.get("best_trial"), kv_table([(param_label(k), _text(x)) for k, x in params.items()],
                                                 f"fold{i}_params")))
    save_table(out, "folds", table_records(cols, rows), tables)
    html = [Markup('<p class="lead">Each fold trains on every bar before its validation block (an expanding window, '
                   "an embargo between the parts), {} on its validation block, and is tested once on its test block. "
                   "Each fold's folder holds its complete {} with its own report.</p>").format(
                "selects its winner" if wf.tuned else "is scored", "sweep" if wf.tuned else "run"),
            render_table("folds", cols, rows)]
    if configs:
        html.append(Markup('<h3>Each fold\'s winning configuration</h3><div class="grid2">{}</div>').format(
            Markup("").join(configs)))
    return Markup("").join(html)


def _text(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v, "sci") if 0 < abs(v) < 1e-2 else f"{v:.4g}"
    return str(v)


def _provenance(wf: WalkForwardFolder) -> Markup:
    s = wf.summary or {}
    items: list[tuple[str, Any]] = [
        ("experiment", wf.name), ("folder", Markup("<code>{}</code>").format(wf.path.resolve())),
        ("folds", len(wf.plan.get("folds") or [])), ("data hash", Markup("<code>{}</code>").format(
            wf.plan.get("data_hash"))), ("started", wf.plan.get("started")), ("stitched", s.get("evaluated", "not yet")),
        ("git commit", Markup("<code>{}</code>").format(s.get("git_commit") or wf.plan.get("git_commit")))]
    cfg = wf.plan.get("config") or wf.plan.get("base_config") or {}
    return kv_table(items, "provenance") + Markup("<details><summary>Configuration of every fold (before the fold "
                                                  "and any searched values)</summary><pre>{}</pre></details>").format(
        yaml.safe_dump(cfg, sort_keys=False))

