"""Baselines share the agents' predict(obs) interface and trade through the same env and costs."""

import subprocess
import sys

import numpy as np
import pytest

from dqlray.baselines import make_baselines
from dqlray.config import EnvConfig
from dqlray.data import synth_market
from dqlray.evaluation import evaluate_policy
from dqlray.features import compute_features
from dqlray.market import Market


@pytest.fixture(scope="module")
def market():
    return Market.build(synth_market(1200, seed=4))


def test_rules_read_the_raw_signal(market):
    b = make_baselines(market, "long_short")
    a, z = market.part("test")
    bars = np.arange(a, z)
    obs = market.observe(bars, np.zeros(len(bars)))
    raw = compute_features(market.data)[bars]
    cross = raw[:, 5]
    expect = np.where(cross > 0, 2, 0)
    agree = (b["ma_crossover"].predict(obs) == expect).mean()
    assert agree > 0.99  # float32 rounding may flip a value within 1e-7 of zero
    assert set(b["buy_and_hold"].predict(obs)) == {2} and set(b["always_flat"].predict(obs)) == {1}


def test_evaluation_of_baselines(market):
    res = {n: evaluate_policy(p, market, part="test", name=n, env=EnvConfig(fee_bps=5, slippage_bps=5))
           for n, p in make_baselines(market).items()}
    flat = res["always_flat"].metrics[0]
    assert flat["total_return"] == 0 and flat["num_trades"] == 0
    bh = res["buy_and_hold"]
    a, z = market.part("test")
    price = market.data.price
    assert bh.equity[0, -1] == pytest.approx((1 - 1e-3) * price[z - 1] / price[a], rel=1e-9)
    assert bh.metrics[0]["num_trades"] == 1 and bh.metrics[0]["exposure"] == 1.0
    assert res["random"].metrics[0]["num_trades"] > 50
    # costs are inside: the same random actions cost more at higher fees
    r2 = evaluate_policy(make_baselines(market)["random"], market, part="test", env=EnvConfig(fee_bps=50, slippage_bps=0))
    assert r2.equity[0, -1] < res["random"].equity[0, -1]


def test_baselines_command_prints_table():
    proc = subprocess.run([sys.executable, "-m", "dqlray", "baselines", "--data_file", "data/test_small.csv"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("buy_and_hold", "always_flat", "ma_crossover", "momentum", "mean_reversion", "random"):
        assert name in proc.stdout
    assert "sharpe" in proc.stdout and "max_drawdown" in proc.stdout
