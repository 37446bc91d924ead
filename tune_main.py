#!/usr/bin/env python
"""Ray Tune sweep of DQN trading agents: ASHA early stopping, Optuna search, resumable.

    python tune_main.py --num-samples 27                 # local Ray, bundled data
    python tune_main.py --search grid                    # the guide's 27-point grid, each point once
    python tune_main.py --address HEAD:PORT --resume ... # join a cluster / continue an interrupted sweep
"""

import sys

from dqlray.tuning.cli import tune_main

if __name__ == "__main__":
    sys.exit(tune_main())
