"""The single-run report: ``dqlray report results/<experiment>`` and the end of ``full-workflow``/``train_single.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from markupsafe import Markup

from dqlray.formatting import fmt
from dqlray.report import plots
from dqlray.report.folders import RunFolder, load_run, report_dir, resolve_data_file
from dqlray.report.format import METRICS, pretty_name
from dqlray.report.html import Document, Report, cards, figure, kv_table, note, render_table, table_records
from dqlray.report.tables import (
    evaluation_rows,
    mean_sd_html,
    metric_columns,
    metrics_from_curves,
    save_table,
    seed_label,
    versus,
)
from dqlray.report.verdict import verdict_card, verdict_details, verdict_note
from dqlray.runinfo import atomic_write_text


def build_run_report(run_dir: str | Path, out_dir: str | Path | None = None, *, tensorboard: bool = True) -> Report:
    """Write ``<run_dir>/report/report.html`` (self-contained) with its PNGs and CSV/JSON tables; return the paths.

    A run stopped before its test evaluation gets a report of its training so far. With ``tensorboard`` the
    per-episode metrics are also written as TensorBoard logs under ``<run_dir>/tensorboard`` (when tensorboardX is
    installed; it comes with Ray Tune).
    """
    run = load_run(run_dir)
    out = report_dir(run.path, out_dir)
    images: dict[str, Path] = {}
    tables: dict[str, Path] = {}
    ev = run.evaluation
    cfg = run.config
    agent = cfg.get("agent", {}).get("agent_type", "agent")
    split = run.meta.get("split", {})
    test_dates = split.get("test", {}).get("dates")
    costs = ev.get("costs_bps") if ev else run.meta.get("costs_bps")
    n_seeds = len(run.meta.get("seeds") or (ev or {}).get("seeds") or [])
    sub = [agent, Markup("<code>{}</code>").format(cfg.get("data", {}).get("data_file", "?"))]
    if test_dates:
        sub.append(f"test {test_dates[0]} → {test_dates[1]}")
    sub += [f"costs {fmt(costs, 'float1')} bps", f"{n_seeds} seeds"]
    doc = Document("run", run.name, sub)

    if ev is None:
        doc.add("summary", "Summary", lambda: note(Markup(
            "This run has no test evaluation yet (<code>eval.json</code> is missing): it was stopped before the end, "
            "or is still training. Resume it with <code>--resume</code>; its training so far is shown below."), "info"))
    else:
        doc.add("summary", "Summary", lambda: _summary(run))
        if "test" in run.equity:
            doc.add("equity", "Equity", lambda: _equity(run, out, images))
            doc.add("drawdown", "Drawdown", lambda: _drawdown(run, out, images))
        if "test" in run.positions:
            doc.add("positions", "Positions and trades", lambda: _positions(run, out, images))
        doc.add("metrics", "Metrics", lambda: _metrics(run, out, tables))
    doc.add("training", "Training", lambda: _training(run, out, images))
    doc.add("reproduce", "Configuration and provenance", lambda: _provenance(run))
    if tensorboard and run.metrics is not None:
        from dqlray.report.tensorboard import export_tensorboard

        try:
            export_tensorboard(run.metrics, run.path / "tensorboard")
        except Exception as e:  # noqa: BLE001 - optional extra; never fail the report for it
            doc.warnings.append(f"TensorBoard export: {type(e).__name__}: {e}")
    html_path = out / "report.html"
    atomic_write_text(html_path, doc.render())
    return Report(html=html_path, equity_png=images.get("equity_test"), images=images, tables=tables,
                  warnings=tuple(doc.warnings), kind="run")


def _summary(run: RunFolder) -> Markup:
    ev = run.evaluation
    assert ev is not None
    s = ev["agent"]["summary"]
    bh = ev["baselines"].get("buy_and_hold", {})
    n = len(ev["agent"]["per_seed"])
    items = []
    for key in ("sharpe", "total_return", "max_drawdown", "num_trades", "exposure"):
        if key not in s:
            continue
        kind = METRICS[key].kind
        items.append((METRICS[key].label, mean_sd_html(s[key]["mean"], s[key]["std"], kind),
                      versus(s[key]["mean"], bh.get(key), kind) if key not in ("num_trades", "exposure") else
                      f"buy & hold {fmt(bh.get(key), kind)}"))
    others = {k: v for k, v in ev["baselines"].items() if k != "always_flat"}
    best_name, best = max(others.items(), key=lambda kv: kv[1].get("sharpe", float("-inf")), default=(None, None))
    beaten = [k for k, v in others.items() if s["sharpe"]["mean"] > v.get("sharpe", float("inf"))]
    split = run.meta.get("split", {}).get("test", {})
    dates = split.get("dates") or ["?", "?"]
    bars = ev.get("bars") or [0, 0]
    sentence = (
        f"On the test split ({dates[0]} to {dates[1]}, {bars[1] - bars[0]} bars, never seen in training or "
        f"selection), the agent's mean over {n} seeds has a Sharpe ratio of {fmt(s['sharpe']['mean'], 'ratio')} "
        f"(sd {fmt(s['sharpe']['std'], 'ratio')} across seeds) and a total return of "
        f"{fmt(s['total_return']['mean'], 'pct')}, after {fmt(ev.get('costs_bps'), 'float1')} bps of costs "
        f"per unit traded. Its Sharpe is above that of {len(beaten)} of the {len(others)} trading baselines (a ranking, "
        f"not a test of skill: the verdict is that test)"
    )
    if best_name is not None:
        sentence += f"; the best baseline is {pretty_name(best_name)} at {fmt(best.get('sharpe'), 'ratio')}"
    v = ev.get("verdict")
    card = verdict_card(v)
    return (cards([card, *items] if card else items) + verdict_note(v)
            + Markup('<p class="lead" style="margin-top:14px">{}.</p>').format(sentence) + verdict_details(v))


def _equity(run: RunFolder, out: Path, images: dict[str, Path]) -> Markup:
    html = []
    eq = run.equity["test"]
    images["equity_test"] = plots.plot_equity(eq, out / "equity_test.png", title=_title(run, "Test split: equity"))
    html.append(figure(images["equity_test"], "Test split, evaluated once: every seed of the agent (thin), their "
                       "mean (bold) and every baseline, through the same environment and costs. Legend: total return.",
                       alt="test equity curves"))
    if "val" in run.equity:
        images["equity_val"] = plots.plot_equity(run.equity["val"], out / "equity_val.png",
                                                 title=_title(run, "Validation split: equity"))
        html.append(figure(images["equity_val"], "Validation split, the same curves. Training scores the agent here "
                           "after every episode, and sweeps pick hyperparameters on it, so it flatters the agent: judge "
                           "on the test split.", alt="validation equity curves"))
    return Markup("").join(html)


def _drawdown(run: RunFolder, out: Path, images: dict[str, Path]) -> Markup:
    images["drawdown_test"] = plots.plot_drawdown(run.equity["test"], out / "drawdown_test.png",
                                                  title=_title(run, "Test split: drawdown"))
    return figure(images["drawdown_test"], "How far below its previous high each curve is: the agent's mean curve "
                  "(filled), each seed (thin) and buy & hold; legend: the worst. Every baseline's worst drawdown is "
                  "in the metrics table.", alt="drawdown")


def _positions(run: RunFolder, out: Path, images: dict[str, Path]) -> Markup:
    ev = run.evaluation or {}
    pos = run.positions["test"]
    eq = run.equity["test"]
    seeds = [c for c in pos.columns if c.startswith("agent_seed")]
    per = ev.get("agent", {}).get("per_seed", [])
    # the seed with the median test Sharpe stands for the agent: neither the luckiest nor the worst
    order = sorted(range(min(len(per), len(seeds))), key=lambda k: per[k].get("sharpe", 0.0))
    k = order[(len(order) - 1) // 2] if order else 0
    label = seed_label(ev, k)
    close, why = _close_prices(run, eq["date"])
    html = []
    if close is None:
        html.append(note(why + " The price panel is omitted; the positions of every seed are shown.", "warn"))
    images["positions_test"] = plots.plot_price_positions(
        eq["date"].to_numpy(), close, pos, seeds[k] if seeds else "agent_seed0", out / "positions_test.png",
        title=_title(run, f"Test split: close price, positions and trades of {label} (median Sharpe)"),
        labels=[seed_label(ev, i) for i in range(len(seeds))])
    html.append(figure(images["positions_test"], f"Top: close price, shaded while {label} (the seed with the "
                       "median test Sharpe) is long, with its buys ▲ and sells ▼ at the close where it decided. "
                       "Bottom: the position of every seed over the test split.", alt="positions and trades"))
    return Markup("").join(html)


def _close_prices(run: RunFolder, dates: pd.Series) -> tuple[np.ndarray | None, Markup]:
    """The close at each bar of the equity curve, from the run's price file (checked against its data hash)."""
    from dqlray.data import data_hash, load_ohlcv

    name = run.config.get("data", {}).get("data_file") or run.meta.get("data_file")
    path = resolve_data_file(name, run.path)
    if path is None:
        return None, Markup("The price file <code>{}</code> was not found (looked relative to the current folder, "
                            "to the run folder and its parents, and in their data/ folders).").format(name)
    try:
        data = load_ohlcv(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file: say so, keep the rest of the report
        return None, Markup("The price file <code>{}</code> could not be read: {}.").format(path, e)
    want = run.meta.get("data_hash")
    if want and data_hash(data) != want:
        return None, Markup("The price file <code>{}</code> has changed since the run (data hash {}, the run used "
                            "{}).").format(path, data_hash(data), want)
    close = pd.Series(data.close, index=pd.DatetimeIndex(data.time)).reindex(pd.DatetimeIndex(dates))
    if close.isna().any():
        return None, Markup("The dates of <code>{}</code> do not cover the run's test split.").format(path)
    return close.to_numpy(dtype=float), Markup("")


def _metrics(run: RunFolder, out: Path, tables: dict[str, Path]) -> Markup:
    ev = run.evaluation
    assert ev is not None
    cols = metric_columns()
    rows = evaluation_rows(ev)
    save_table(out, "metrics_test", table_records(cols, rows), tables)
    html = [Markup("<h3>Test split <small>(from <code>eval.json</code>; costs {} bps)</small></h3>").format(
                fmt(ev.get("costs_bps"), "float1")), render_table("metrics_test", cols, rows),
            Markup('<p class="lead" style="margin-top:8px">Agent: mean ± standard deviation over seeds, then each '
                   "seed. Best value per column in green (agent mean and baselines). Hover a header for its "
                   "definition.</p>")]
    if "val" in run.equity:
        periods = int(run.config.get("train", {}).get("periods_per_year", 252))
        val = metrics_from_curves(run.equity["val"], run.positions.get("val"), periods)
        vrows = evaluation_rows({**val, "seeds": ev.get("seeds")}, seeds=False)
        save_table(out, "metrics_val", table_records(cols, vrows), tables)
        html += [Markup("<h3>Validation split <small>(recomputed from <code>equity_val.csv</code>)</small></h3>"),
                 render_table("metrics_val", cols, vrows)]
    return Markup("").join(html)


def _training(run: RunFolder, out: Path, images: dict[str, Path]) -> Markup:
    m = run.metrics
    if m is None or not len(m):
        return note(Markup("No <code>metrics.csv</code>: nothing was trained yet."), "info")
    images["training"] = plots.plot_training(m, out / "training.png", title=_title(run, "Training"))
    last = m.iloc[-1]
    facts = [f"{int(last.get('episodes', len(m)))} episodes"]
    if "env_steps" in m:
        facts.append(f"{int(last['env_steps']):,} environment steps per seed")
    if "updates" in m:
        facts.append(f"{int(last['updates']):,} gradient updates")
    if "time_total_s" in m:
        facts.append(f"{fmt(last['time_total_s'], 'seconds')} of training")
    return figure(images["training"], "Per episode: training return, loss, exploration rate, mean Q value, and the "
                  "validation Sharpe ratio and return (mean over seeds, band ± one standard deviation across seeds, "
                  "dotted: the worst seed's Sharpe). " + "; ".join(facts) + ".", alt="training curves")


def _provenance(run: RunFolder) -> Markup:
    meta = run.meta
    split = meta.get("split", {})
    code = Markup("<code>{}</code>").format
    items: list[tuple[str, Any]] = [
        ("experiment", run.name), ("folder", code(run.path.resolve())), ("data file", code(meta.get("data_file"))),
        ("data hash", code(meta.get("data_hash"))), ("bars", meta.get("bars")),
    ]
    for part in ("train", "val", "test"):
        if part in split:
            a, b = split[part].get("bars", [0, 0])
            d = split[part].get("dates", ["?", "?"])
            items.append((f"{part} split", f"{d[0]} → {d[1]} ({b - a} bars)"))
    items += [("costs", f"{fmt(meta.get('costs_bps'), 'float1')} bps per unit traded (fees + slippage)"),
              ("seeds", ", ".join(map(str, meta.get("seeds", [])))),
              ("git commit", code(meta.get("git_commit"))),
              ("started", meta.get("started")),
              ("command", code(" ".join(map(str, meta.get("command", [])))))]
    versions = list((meta.get("versions") or {}).items())
    cfg_tables = Markup("").join(Markup("<div><h3>{}</h3>{}</div>").format(sec, kv_table(_flat(vals), f"config_{sec}"))
                                 for sec, vals in run.config.items() if isinstance(vals, dict))
    return Markup('<div class="grid2"><div><h3>Run</h3>{}</div><div><h3>Versions</h3>{}</div></div>'
                  '<h3>Resolved configuration</h3><div class="grid2">{}</div>'
                  "<details><summary>config.yaml as saved</summary><pre>{}</pre></details>").format(
        kv_table(items, "provenance"), kv_table(versions, "versions"), cfg_tables,
        yaml.safe_dump(run.config, sort_keys=False))


def _flat(d: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...")
             .strip()) for k, v in d.items()]


def _title(run: RunFolder, what: str) -> str:
    return f"{what} · {run.name}"
