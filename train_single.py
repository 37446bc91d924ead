#!/usr/bin/env python
"""Train one DQN trading experiment, evaluate it once on the test split, and save a report.

    python train_single.py --agent_type custom --data_file data/test_small.csv --episodes 20
"""

import sys

from dqlray.cli import train_single_main

if __name__ == "__main__":
    sys.exit(train_single_main())
