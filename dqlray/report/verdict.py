"""The verdict in the reports (issue 11): the same statement and figures as the terminal, ``summary.json`` and
Telegram (:func:`dqlray.verdict.verdict_figures`), shown as what it is: a note that says plainly when the agent does
not beat its benchmark, never a bold claim of skill next to a red "vs buy & hold"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from dqlray.formatting import fmt
from dqlray.report.html import kv_table, note
from dqlray.verdict import benchmark_label, verdict_figures, zero_null_dsr_text


def verdict_card(v: Mapping[str, Any] | None) -> tuple[str, Markup, Markup] | None:
    """A headline card: whether the agent beats the benchmark, with the information ratio and both p-values."""
    if not v:
        return None
    bench = benchmark_label(str(v.get("benchmark")))
    beats = bool(v.get("beats_benchmark"))
    value = Markup('<span class="{}">{}</span>').format("up" if beats else "down", "beats" if beats else "does not beat")
    cmp = Markup("{}: IR {}, p {} and {}").format(bench, fmt(v.get("info_ratio"), "ratio"),
                                                 fmt(v.get("p_benchmark"), "float3"), fmt(v.get("p_random"), "float3"))
    return (f"Verdict vs {bench}", value, cmp)


def verdict_note(v: Mapping[str, Any] | None) -> Markup:
    """The statement as a note: blue when the agent beats the benchmark, yellow when it does not (plain text)."""
    if not v:
        return note(Markup("No verdict: this result was evaluated before dqlray kept one (issue 11)."), "info")
    bench = benchmark_label(str(v.get("benchmark")))
    beats = bool(v.get("beats_benchmark"))
    return note(str(v.get("statement", "")), "info" if beats else "warn",
                f"Beats {bench}." if beats else f"Does not beat {bench}.")


def verdict_details(v: Mapping[str, Any] | None, zero_null_dsr: Mapping[str, Any] | None = None) -> Markup:
    """The verdict's figures as a table (the same labels as everywhere), the method, and the zero-null DSR detail."""
    if not v:
        return Markup("")
    items: list[tuple[str, Any]] = []
    for k, val in verdict_figures(v).items():
        kind = "ratio" if k == "information ratio" else "float3"
        items.append((k, val if isinstance(val, str) else fmt(val, kind)))
    items += [("test bars · seeds · folds", f"{v.get('bars')} · {v.get('seeds')} · {v.get('folds', 1)}"),
              ("method", f"check 1: stationary bootstrap ({v.get('n_boot')} resamples, mean block "
                         f"{fmt(v.get('block_length'), 'float1')} bars); check 2: {v.get('n_null')} policies with the "
                         f"agent's own exposure and trades at random times (median IR "
                         f"{fmt(v.get('null_median_info_ratio'), 'ratio')})"),
              ("test Sharpe: agent · benchmark", f"{fmt(v.get('agent_sharpe'), 'ratio')} · "
                                                f"{fmt(v.get('benchmark_sharpe'), 'ratio')}")]
    if v.get("val_info_ratio") is not None:
        items.append(("winner's validation IR · expected best of N unskilled",
                      f"{fmt(v.get('val_info_ratio'), 'ratio')} · {fmt(v.get('expected_max_info_ratio'), 'ratio')}"))
    html = kv_table(items, "verdict")
    lead = Markup('<p class="lead" style="margin-top:8px">Skill is measured on active returns (agent minus {}, per '
                  "bar, after costs): the agent beats it when both p-values are at most {}. The deflated Sharpe of "
                  "the winner's validation information ratio and the probability of backtest overfitting (sweeps) "
                  "only warn.</p>").format(benchmark_label(str(v.get("benchmark"))), fmt(v.get("level"), "float3"))
    html += lead
    if zero_null_dsr and zero_null_dsr.get("dsr") is not None:
        html += Markup('<p class="lead">Detail, not the verdict: {}</p>').format(zero_null_dsr_text(zero_null_dsr))
    return html
