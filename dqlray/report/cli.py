"""``dqlray report DIR`` and ``dqlray compare DIR... [--out FILE]`` (registered by :mod:`dqlray.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_report_parsers(sub: Any) -> None:
    """Register the ``report`` and ``compare`` subcommands on the ``dqlray`` subparsers."""
    sp = sub.add_parser("report", help="write the HTML report of a run folder or a sweep folder")
    sp.add_argument("dir", help="results/<experiment> (a single run) or <storage>/<experiment> (a sweep)")
    sp.add_argument("--out-dir", "--out_dir", dest="out_dir", default=None,
                    help="where the report goes (default DIR/report/)")
    sp.set_defaults(func=cmd_report)
    sp = sub.add_parser("compare", help="compare runs and sweeps side by side in one HTML report")
    sp.add_argument("dirs", nargs="*", metavar="DIR", help="run or sweep folders")
    sp.add_argument("--results_dir", "--results-dir", dest="results_dir", default=None,
                    help="compare every finished run and sweep in this folder (the guide's form)")
    sp.add_argument("--out", default="comparison_report.html",
                    help="HTML file (default comparison_report.html; pictures and tables go to <stem>_files/)")
    sp.add_argument("--title", default=None, help="heading of the report")
    sp.set_defaults(func=cmd_compare)


def _done(rep: Any) -> int:
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"Report: {rep.html}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report of one run or sweep folder."""
    from dqlray.report import build_report

    return _done(build_report(args.dir, args.out_dir))


def cmd_compare(args: argparse.Namespace) -> int:
    """Build the comparison report of the folders given, and of every finished one in ``--results_dir``."""
    from dqlray.errors import DqlrayError
    from dqlray.report import build_comparison_report
    from dqlray.report.folders import experiment_folders

    dirs, skipped = list(args.dirs), []
    if args.results_dir is not None:
        found, skipped = experiment_folders(args.results_dir)
        dirs += [d for d in found if d not in {Path(x) for x in args.dirs}]
    if not dirs:
        raise DqlrayError("compare: give run or sweep folders, or --results_dir DIR")
    for w in skipped:
        print(f"warning: {w}", file=sys.stderr)
    return _done(build_comparison_report(dirs, args.out, title=args.title))
