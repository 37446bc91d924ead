#!/usr/bin/env python
"""The guide's comparison report: python generate_comparison_report.py --results_dir DIR (or DIR...) [--out FILE]."""

import sys

from dqlray.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
