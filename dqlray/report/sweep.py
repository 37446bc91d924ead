"""The sweep report: ``dqlray report <sweep dir>`` and the end of ``tune_main.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from markupsafe import Markup

from dqlray.formatting import fmt
from dqlray.report import plots
from dqlray.report.folders import SweepFolder, load_sweep, report_dir
from dqlray.report.format import metric_label, number_kind, param_label
from dqlray.report.html import Column, Document, Report, Row, cards, figure, kv_table, note, render_table, table_records
from dqlray.report.importance import Importance, param_importance, param_scale
from dqlray.report.tables import evaluation_rows, mean_sd_html, metric_columns, save_table, versus
from dqlray.report.verdict import verdict_card, verdict_details, verdict_note
from dqlray.runinfo import atomic_write_text, json_text


def build_sweep_report(exp_dir: str | Path, out_dir: str | Path | None = None) -> Report:
    """Write ``<exp_dir>/report/report.html`` (self-contained) with its PNGs and CSV/JSON tables; return the paths."""
    sw = load_sweep(exp_dir)
    out = report_dir(sw.path, out_dir)
    images: dict[str, Path] = {}
    tables: dict[str, Path] = {}
    s = sw.summary or {}
    sub = [f"{s.get('search') or sw.meta.get('sweep', {}).get('search', '?')} search",
           f"{len(sw.trials)} configurations", f"ranked by {metric_label(sw.metric)}"]
    data_file = s.get("data_file") or sw.meta.get("base_config", {}).get("data", {}).get("data_file")
    if data_file:
        sub.append(Markup("<code>{}</code>").format(data_file))
    doc = Document("sweep", sw.name, sub)
    doc.add("summary", "Summary", lambda: _summary(sw))
    if sw.summary and "test" in sw.summary:
        doc.add("winner", "Winner on the test split", lambda: _winner(sw, out, images, tables))
    else:
        doc.add("winner", "Winner on the test split", lambda: note(Markup(
            "No <code>summary.json</code>: the winner has not been evaluated on the test split yet (the sweep did not "
            "complete). Resume it with <code>tune_main.py --resume</code>."), "info"))
    doc.add("trials", "Configurations", lambda: _trials(sw, out, images, tables))
    doc.add("hyperparameters", "Hyperparameters", lambda: _hyperparameters(sw, out, images, tables))
    doc.add("reproduce", "Configuration and provenance", lambda: _provenance(sw))
    html_path = out / "report.html"
    atomic_write_text(html_path, doc.render())
    return Report(html=html_path, equity_png=images.get("equity_test") or images.get("rungs"), images=images,
                  tables=tables, warnings=tuple(doc.warnings), kind="sweep")


def _true(v: Any) -> bool:
    return str(v).lower() == "true"


def _status(sw: SweepFolder) -> dict[str, str]:
    """Each configuration: ``error`` (its pack failed, or it diverged), ``stopped`` (by ASHA), ``full`` (ran its
    whole budget) or ``other``."""
    out = {}
    max_t = sw.max_t
    full_col = "full_budget" in sw.trials.columns
    for _, r in sw.trials.iterrows():
        if _true(r.get("error")) or r.get("status") == "ERROR" or _true(r.get("diverged")):
            st = "error"
        elif _true(r.get("stopped_by_asha")):
            st = "stopped"
        elif _true(r.get("full_budget")) if full_col else (max_t is not None and r.get("episodes") == max_t):
            st = "full"
        else:
            st = "other"
        out[str(r["config_id"])] = st
    return out


def rungs(sw: SweepFolder) -> list[int]:
    """ASHA's milestones below the full budget: ``grace_period * reduction_factor**k``."""
    st = sw.meta.get("sweep") or {}
    if st.get("scheduler", "asha") != "asha" or not sw.max_t:
        return []
    g, rf = int(st.get("grace_period", 1)), int(st.get("reduction_factor", 2))
    out, t = [], g
    while t < sw.max_t:
        out.append(t)
        t *= rf
    return out


def _summary(sw: SweepFolder) -> Markup:
    s = sw.summary or {}
    t = sw.trials
    status = _status(sw)
    n_full = sum(v == "full" for v in status.values())
    n_stop = sum(v == "stopped" for v in status.values())
    n_err = sum(v == "error" for v in status.values())
    expected = sw.meta.get("expected_configs") or sw.meta.get("expected_trials")
    packs = t["pack_id"].nunique() if "pack_id" in t.columns else None
    items = [("Configurations", str(len(t)), f"{n_full} full budget · {n_stop} stopped by ASHA"
              + (f" · {n_err} failed or diverged" if n_err else "") + (f" · {expected} planned" if expected else "")
              + (f" · trained in {packs} pack(s)" if packs else ""))]
    best = s.get("best_trial")
    if best is None and len(t):
        best = str(t.sort_values(sw.metric, ascending=False).iloc[0]["config_id"])
    if best is not None:
        row = t[t["config_id"] == str(best)]
        v = row.iloc[0][sw.metric] if len(row) else None
        sd_key = f"{sw.metric}_std"
        sd = row.iloc[0][sd_key] if len(row) and sd_key in row else None
        items.append((f"Best {metric_label(sw.metric)}", mean_sd_html(v, sd, number_kind(sw.metric)),
                      Markup("configuration <code>{}</code>").format(best)))
    lead = Markup("")
    if "test" in s:
        ev = s["test"]
        a = ev["agent"]["summary"]
        bh = ev["baselines"].get("buy_and_hold", {})
        items.append(("Winner's test Sharpe", mean_sd_html(a["sharpe"]["mean"], a["sharpe"]["std"], "ratio"),
                      versus(a["sharpe"]["mean"], bh.get("sharpe"), "ratio")))
        items.append(("Winner's test return", mean_sd_html(a["total_return"]["mean"], a["total_return"]["std"], "pct"),
                      versus(a["total_return"]["mean"], bh.get("total_return"), "pct")))
        v = s.get("verdict")
        card = verdict_card(v)
        if card:
            items.insert(0, card)
        if v and v.get("dsr_active") is not None:
            items.append(("Deflated Sharpe (validation IR)", fmt(v["dsr_active"], "float3"),
                          f"best of {v.get('n_trials')} candidates (configurations or checkpoints); "
                          f"PBO {fmt(v.get('pbo'), 'float3')}"))
        lead = verdict_note(v)
    return cards(items) + lead


def _winner(sw: SweepFolder, out: Path, images: dict[str, Path], tables: dict[str, Path]) -> Markup:
    s = sw.summary or {}
    ev = s["test"]
    html = [Markup('<p class="lead">Configuration <code>{}</code> had the best {} among the configurations that used '
                   "the full budget. Its checkpoint was evaluated once on the untouched test split ({}), every seed "
                   "next to every baseline, with {} bps of costs per unit traded.</p>").format(
        s.get("best_trial"), metric_label(sw.metric), s.get("evaluated", "?"), fmt(ev.get("costs_bps"), "float1"))]
    if sw.equity is not None:
        images["equity_test"] = plots.plot_equity(sw.equity, out / "equity_test.png",
                                                  title=f"Winner on the test split: equity · {sw.name}")
        html.append(figure(images["equity_test"], "The winner's seeds (thin), their mean (bold) and every baseline on "
                           "the test split. Legend: total return.", alt="winner test equity"))
        images["drawdown_test"] = plots.plot_drawdown(sw.equity, out / "drawdown_test.png",
                                                      title=f"Winner on the test split: drawdown · {sw.name}")
        html.append(figure(images["drawdown_test"], "How far below its previous high each curve is (the winner's "
                           "mean filled, each seed thin, buy & hold dashed); legend: the worst.",
                           alt="winner drawdown"))
    cols = metric_columns()
    rows = evaluation_rows(ev)
    save_table(out, "metrics_test", table_records(cols, rows), tables)
    html.append(Markup("<h3>Test metrics</h3>") + render_table("metrics_test", cols, rows))
    params = [(param_label(k), _param_text(v)) for k, v in (s.get("best_params") or {}).items()]
    html.append(Markup('<div class="grid2"><div><h3>Verdict</h3>{}{}</div>'
                       '<div><h3>Winning hyperparameters</h3>{}<p class="lead" style="margin-top:8px">Re-train them with '
                       "<code>python train_single.py --config {}</code>.</p></div></div>").format(
        verdict_note(s.get("verdict")), verdict_details(s.get("verdict"), s.get("deflated_sharpe")),
        kv_table(params, "best_params"), sw.path / "best_config.yaml"))
    return Markup("").join(html)


def _param_text(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v, "sci") if 0 < abs(v) < 1e-2 else f"{v:.4g}"
    return str(v)


TRIAL_LABELS = {"config_id": "configuration", "pack_id": "pack", "trial_id": "trial", "env_steps": "env steps",
                "stopped_by_asha": "stopped by ASHA", "full_budget": "full budget",
                "selected_episode": "chosen episode", "evaluations": "evaluations",
                "val_sharpe": "val Sharpe", "val_sharpe_std": "val Sharpe sd", "val_return": "val return",
                "episode_return": "train return", "time_total_s": "time", "node_ip": "node", "error": "failed"}


def _trial_columns(sw: SweepFolder) -> list[Column]:
    """Every column of trials.csv, except ``node_ip`` on a single node and ``error`` when no trial failed."""
    cols = []
    params = set(sw.params)
    t = sw.trials
    for c in t.columns:
        if c == "node_ip" and t[c].nunique(dropna=True) <= 1:
            continue
        if c == "error" and not t[c].astype(str).str.lower().eq("true").any():
            continue
        kind = number_kind(c, list(t[c]))
        if c in ("config_id", "pack_id", "trial_id", "status", "node_ip"):
            kind = "text"
        label = param_label(c) if c in params else TRIAL_LABELS.get(c, c.replace("_", " "))
        cols.append(Column(c, label, kind, help=f"{c}: {(sw.meta.get('space') or {}).get(c, '')}".rstrip(": ")))
    return cols


def _trials(sw: SweepFolder, out: Path, images: dict[str, Path], tables: dict[str, Path]) -> Markup:
    status = _status(sw)
    best = (sw.summary or {}).get("best_trial")
    html = []
    if sw.curves:
        images["rungs"] = plots.plot_rungs(sw.curves, status, best, rungs(sw), sw.max_t, sw.metric,
                                           out / "rungs.png", title=f"Configurations by episode, and where ASHA "
                                                                    f"stopped them · {sw.name}")
        long = pd.concat([df.assign(config_id=cid)[["config_id", "episodes", sw.metric]]
                          for cid, df in sw.curves.items() if "episodes" in df and sw.metric in df], ignore_index=True)
        save_table(out, "curves", long.to_dict("records"), tables)
        html.append(figure(images["rungs"], "Each line is a configuration's validation score after each episode. At "
                           "every ASHA rung (dashed) only the best 1/reduction_factor of the configurations that "
                           "reached it go on; the others stop there (✕). The winner is the best configuration that ran "
                           "the full budget.", alt="rung chart"))
    else:
        html.append(note(Markup("No per-configuration <code>metrics.csv</code> found: the learning curves are not "
                                "available."), "info"))
    cols = _trial_columns(sw)
    rows = []
    for _, r in sw.trials.iterrows():
        cid = str(r["config_id"])
        rows.append(Row(cid, {c.key: r[c.key] for c in cols}, cls="best" if cid == best else "", compete=False))
    html.append(Markup("<h3>All configurations</h3>"
                       '<p class="lead">Click a header to sort. Validation metrics only: the test split is not used to '
                       "rank. A configuration stopped by ASHA is scored at the budget it reached; configurations of "
                       "one pack were trained together in one trial. The winner is highlighted.</p>")
                + render_table("trials", cols, rows, sortable=True))
    return Markup("").join(html)


def _hyperparameters(sw: SweepFolder, out: Path, images: dict[str, Path], tables: dict[str, Path]) -> Markup:
    params = sw.params
    if not params:
        return note(Markup("No searched hyperparameters in <code>trials.csv</code>."), "info")
    space = sw.meta.get("space") or {}
    scales = {p: param_scale(p, space.get(p), sw.trials[p]) for p in params}
    scales = {p: "linear" if v == "int" else v for p, v in scales.items()}
    best = (sw.summary or {}).get("best_trial")
    images["params"] = plots.plot_param_scatter(sw.trials, params, scales, sw.metric, best, out / "params.png",
                                                title=f"Hyperparameters against {metric_label(sw.metric)} · {sw.name}")
    html = [figure(images["params"], "One point per configuration; filled: ran the full budget, hollow: stopped by ASHA "
                   "(scored earlier), red star: the winner. Learning rates and other log-uniform parameters on a log "
                   "axis; choices as categories.", alt="hyperparameters against the validation metric")]
    imp = param_importance(sw.trials, params, sw.metric, space)
    html.append(_importance_html(imp, sw, out, images, tables))
    return Markup("").join(html)


def _importance_html(imp: Importance, sw: SweepFolder, out: Path, images: dict[str, Path],
                     tables: dict[str, Path]) -> Markup:
    records = [{"param": k, "importance": v} for k, v in imp.values.items()]
    save_table(out, "importance", records, tables)
    atomic_write_text(out / "importance_meta.json", json_text({"method": imp.method, "n_trials": imp.n_trials,
                                                               "note": imp.note}))
    html = [Markup("<h3>Which hyperparameters mattered</h3>")]
    if not imp.values:
        return html[0] + note(imp.note, "info")
    images["importance"] = plots.plot_importance(imp.values, imp.method, out / "importance.png",
                                                 title=f"Hyperparameter importance · {sw.name}")
    caveat = (f" With only {imp.n_trials} trials this is a hint, not a finding: tens of trials are needed."
              if imp.n_trials < 20 else "")
    html.append(figure(images["importance"], f"Share of the variation of the "
                       f"{metric_label(sw.metric)} across {imp.n_trials} trials explained by each "
                       f"hyperparameter ({imp.method}).{caveat} {imp.note}", alt="importance"))
    cols = [Column("param", "Hyperparameter", "text"), Column("importance", "Importance", "pct")]
    rows = [Row(k, {"param": param_label(k), "importance": v}) for k, v in imp.values.items()]
    html.append(Markup('<div style="max-width:520px">{}</div>').format(render_table("importance", cols, rows)))
    return Markup("").join(html)


def _provenance(sw: SweepFolder) -> Markup:
    s = sw.summary or {}
    m = sw.meta
    st = m.get("sweep") or {}
    code = Markup("<code>{}</code>").format
    items: list[tuple[str, Any]] = [
        ("experiment", sw.name), ("folder", code(sw.path.resolve())),
        ("search", st.get("search") or s.get("search")), ("metric", f"{sw.metric} (validation, maximised)"),
        ("configurations", f"{len(sw.trials)} of {m.get('expected_configs', m.get('expected_trials', '?'))} "
                           f"planned" + (f", packs of up to {m['pack_size']}" if m.get("pack_size") else "")),
        ("ASHA", f"grace period {st.get('grace_period')}, reduction factor {st.get('reduction_factor')}, "
                 f"max {sw.max_t} episodes" if st.get("scheduler", "asha") == "asha" else "off"),
        ("data file", code(s.get("data_file") or _base_data_file(m))),
        ("data hash", code(s.get("data_hash") or m.get("data_hash"))),
        ("git commit", code(s.get("git_commit") or m.get("git_commit"))),
        ("test evaluated", s.get("evaluated", "not yet")),
    ]
    space = [(param_label(k), v) for k, v in (m.get("space") or {}).items()]
    versions = list((s.get("versions") or m.get("versions") or {}).items())
    html = Markup('<div class="grid2"><div><h3>Sweep</h3>{}</div><div><h3>Search space</h3>{}<h3>Versions</h3>{}'
                  "</div></div>").format(kv_table(items, "provenance"), kv_table(space, "space"),
                                         kv_table(versions, "versions"))
    base = m.get("base_config")
    if base:
        html += Markup("<details><summary>Base configuration of every configuration (before the searched values)"
                       "</summary>"
                       "<pre>{}</pre></details>").format(yaml.safe_dump(base, sort_keys=False))
    best_cfg = sw.path / "best_config.yaml"
    if best_cfg.exists():
        html += Markup("<details><summary>best_config.yaml</summary><pre>{}</pre></details>").format(best_cfg.read_text())
    return html


def _base_data_file(meta: dict[str, Any]) -> Any:
    return meta.get("base_config", {}).get("data", {}).get("data_file")

