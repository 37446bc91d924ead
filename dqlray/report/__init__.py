"""Reports people would rather look at than read (issue 6): runs, sweeps and comparisons as self-contained HTML.

::

    from dqlray.report import build_report, build_run_report, build_sweep_report, build_comparison_report
    rep = build_run_report("results/demo")        # results/demo/report/report.html, PNGs, CSV/JSON tables
    rep.html, rep.equity_png                      # the page, and the picture for a chat message

Command line: ``dqlray report DIR`` (a run, sweep or walk-forward folder) and ``dqlray compare DIR... [--out FILE]``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dqlray.report.compare import build_comparison_report
from dqlray.report.folders import folder_kind
from dqlray.report.html import Report
from dqlray.report.run import build_run_report
from dqlray.report.sweep import build_sweep_report
from dqlray.report.walkforward import build_walk_forward_report

__all__ = ["Report", "build_comparison_report", "build_report", "build_run_report", "build_sweep_report",
           "build_walk_forward_report", "folder_kind", "report_after_run"]


def build_report(path: str | Path, out_dir: str | Path | None = None) -> Report:
    """The report of a run folder, a sweep folder or a walk-forward experiment, whichever ``path`` is."""
    kind = folder_kind(path)
    if kind == "walk_forward":
        return build_walk_forward_report(path, out_dir)
    if kind == "sweep":
        return build_sweep_report(path, out_dir)
    return build_run_report(path, out_dir)


def report_after_run(path: str | Path, out: Callable[[str], None] = print,
                     warn: Callable[[str], None] | None = None) -> str | None:
    """Build ``path``'s report at the end of a run, sweep or walk-forward and print where it is; return the picture
    for the completion message. A report that fails is a warning (``warn``, default ``out``), never the run's
    failure: the results are saved and ``dqlray report DIR`` can retry."""
    try:
        rep = build_report(path)
    except Exception as e:  # noqa: BLE001 - see the docstring
        (warn or out)(f"warning: no report: {type(e).__name__}: {e}")
        return None
    out(f"Report: {rep.html}")
    return str(rep.equity_png) if rep.equity_png else None
