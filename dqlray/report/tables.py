"""Tables shared by the reports: an evaluation's metrics (agent mean ± sd, each seed, each baseline)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

from dqlray.formatting import fmt, fmt_sd
from dqlray.metrics import finite_or_none
from dqlray.report.format import METRICS, pretty_name
from dqlray.report.html import Column, Row, esc
from dqlray.runinfo import atomic_write_text, json_text


def metric_columns(first: str = "Policy") -> list[Column]:
    """The policy column and one column per metric, with definitions as tooltips."""
    return [Column("policy", first, "text")] + [Column(k, s.label, s.kind, s.help, s.better) for k, s in METRICS.items()]


def seed_label(evaluation: dict[str, Any], k: int) -> str:
    """``seed 7`` for the k-th agent column (the seed value when the evaluation lists seeds); ``ensemble of 4
    seeds`` for a run scored as its seeds' ensemble (``train.ensemble``, one agent column)."""
    seeds = evaluation.get("seeds") or []
    if evaluation.get("policy") == "ensemble":
        return f"ensemble of {len(seeds)} seeds"
    return f"seed {seeds[k]}" if k < len(seeds) else f"seed #{k}"


def evaluation_rows(evaluation: dict[str, Any], *, seeds: bool = True) -> list[Row]:
    """Rows of an ``eval.json``-shaped evaluation: agent mean ± sd, optionally each seed, then every baseline."""
    summ = evaluation["agent"]["summary"]
    n = len(evaluation["agent"].get("per_seed", []))
    spread = seed_label(evaluation, 0) if evaluation.get("policy") == "ensemble" else f"± sd over {n} seeds"
    rows = [Row("agent", {"policy": "agent, mean", **{k: summ[k]["mean"] for k in METRICS if k in summ}},
                sd={k: summ[k]["std"] for k in METRICS if k in summ}, cls="agent", sub={"policy": spread})]
    if seeds:
        for k, m in enumerate(evaluation["agent"].get("per_seed", [])):
            rows.append(Row(f"agent_seed{k}", {"policy": seed_label(evaluation, k), **m}, cls="seed", compete=False))
    for name, m in evaluation.get("baselines", {}).items():
        rows.append(Row(name, {"policy": pretty_name(name), **m}))
    return rows


def metrics_from_curves(eq: pd.DataFrame, pos: pd.DataFrame | None, periods: int) -> dict[str, Any]:
    """An ``eval.json``-shaped evaluation recomputed from saved curves (used for the validation split).

    Returns come from the equity curve; positions held give exposure, and their changes (from a flat start, as in
    :func:`dqlray.evaluation.evaluate_policy`) the trades and turnover.
    """
    from dqlray.metrics import summarize

    def one(col: str) -> dict[str, Any]:
        v = eq[col].to_numpy(dtype=float)
        r = v[1:] / v[:-1] - 1.0
        if pos is not None and col in pos:
            held = pos[col].to_numpy(dtype=float)
        else:
            held = np.zeros(len(r))
        traded = np.abs(held - np.concatenate([[0.0], held[:-1]]))
        return summarize(r, held, traded, periods)

    seeds = [c for c in eq.columns if c.startswith("agent_seed")]
    per_seed = [one(c) for c in seeds]
    summary = {}
    for k in per_seed[0] if per_seed else []:
        vals = np.array([m[k] for m in per_seed], dtype=float)
        summary[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    base = {c: one(c) for c in eq.columns if c != "date" and not c.startswith("agent_")}
    return {"agent": {"per_seed": per_seed, "summary": summary}, "baselines": base}


def versus(agent: float | None, ref: float | None, kind: str, ref_name: str = "buy & hold") -> Markup:
    """``vs buy & hold 1.39`` with the agent's side coloured."""
    if finite_or_none(ref) is None:
        return Markup("")
    cls = ""
    if finite_or_none(agent) is not None:
        cls = "up" if agent > ref else "down" if agent < ref else ""
    return Markup('<span class="{}">vs {} {}</span>').format(cls, ref_name, fmt(ref, kind))


def mean_sd_html(mean: Any, sd: Any, kind: str) -> Markup:
    """``0.63 <span class="sd">± 0.65</span>`` for a headline card."""
    s = fmt_sd(sd, kind)
    return esc(fmt(mean, kind)) + (Markup(' <span class="sd">{}</span>').format(s) if s else "")


def save_table(out: Path, name: str, records: list[dict[str, Any]], tables: dict[str, Path]) -> None:
    """Write a report's table as ``<out>/<name>.csv`` and ``.json`` (NaN as null), and record the CSV in ``tables``."""
    buf = io.StringIO()
    pd.DataFrame(records).to_csv(buf, index=False)
    atomic_write_text(out / f"{name}.csv", buf.getvalue())
    atomic_write_text(out / f"{name}.json", json_text(records))
    tables[name] = out / f"{name}.csv"
