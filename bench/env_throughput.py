"""Vectorised env throughput: env-steps per second with N environments on one core.

    python -m bench.env_throughput [--n-envs 1024] [--seconds 3]

Prints the figure for the vectorised env and, as a peer measured in the same run, the single Gymnasium env.
Goal (issue 2): at least 1,000,000 env-steps/s with N=1024 on one core of these machines.
"""

import argparse
import os
import time

import numpy as np

from dqlray.config import EnvConfig
from dqlray.data import load_ohlcv
from dqlray.env import TradingEnv
from dqlray.market import Market
from dqlray.vec_env import VecTradingEnv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-envs", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--data", default="data/test_small.csv")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    market = Market.build(load_ohlcv(args.data))
    venv = VecTradingEnv(market, args.n_envs, env=EnvConfig(random_start=True, episode_length=256))
    venv.reset()
    actions = np.random.default_rng(0).integers(0, 2, size=(512, args.n_envs))
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        for a in actions:
            venv.step(a)
        steps += len(actions)
    vec_rate = steps * args.n_envs / (time.perf_counter() - t0)

    env = TradingEnv(market, random_start=True, episode_length=256)
    env.reset(seed=0)
    acts = actions[:, 0].tolist()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(args.seconds, 2.0):
        for a in acts:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        steps += len(acts)
    single_rate = steps / (time.perf_counter() - t0)
    print(f"{'env':<34}{'env-steps/s':>14}{'ratio':>8}")
    print(f"{'single TradingEnv (gymnasium)':<34}{single_rate:>14,.0f}{1.0:>8.1f}")
    print(f"{f'VecTradingEnv N={args.n_envs}':<34}{vec_rate:>14,.0f}{vec_rate / single_rate:>8.1f}")
    print(f"goal >= 1,000,000 env-steps/s with N=1024: {'met' if vec_rate >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
