"""Baselines share the agents' predict(obs) interface and trade through the same env and costs."""

import subprocess
import sys

import numpy as np
import pytest

from dqlray.baselines import LinearProbe, cost_aware_actions, fit_ridge, make_baselines
from dqlray.config import EnvConfig
from dqlray.data import Split, synth_market
from dqlray.evaluation import evaluate_policy
from dqlray.features import Scaler, compute_features
from dqlray.market import Market


@pytest.fixture(scope="module")
def market():
    return Market.build(synth_market(1200, seed=4))


def test_rules_read_the_raw_signal(market):
    b = make_baselines(market, EnvConfig(positions="long_short"))
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
    r2 = evaluate_policy(make_baselines(market)["random"], market, part="test",
                         env=EnvConfig(fee_bps=50, slippage_bps=0))
    assert r2.equity[0, -1] < res["random"].equity[0, -1]


def test_baselines_command_prints_table():
    proc = subprocess.run([sys.executable, "-m", "dqlray", "baselines", "--data_file", "data/test_small.csv"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("buy_and_hold", "always_flat", "ma_crossover", "momentum", "mean_reversion", "random", "linear_probe"):
        assert name in proc.stdout
    assert "sharpe" in proc.stdout and "max_drawdown" in proc.stdout


# ------------------------------------------------------------------------------------ the linear probe (issue 12)


def _tiny_market(x: list[float], r: list[float], split: Split) -> Market:
    """One feature, window 1: observations are ``[x_t, position]``; the scaler is the identity."""
    n = len(x)
    data = synth_market(n, seed=0)
    feats = np.asarray(x, dtype=np.float32)[:, None]
    return Market(data=data, split=split, window=1, scaler=Scaler(mean=np.zeros(1), std=np.ones(1)),
                  features=feats, ret_next=np.asarray(r, dtype=np.float64), _windows=None)


@pytest.fixture
def tiny():
    # train rows t = 0..3 (bar 4's return would reach into validation): x = -1, -1, 1, 1; y = -2, 0, 2, 4 (1e-3).
    #   mean y = 1e-3; centred, sum x y / n = (3 + 1 + 1 + 3) / 4 * 1e-3 = 2e-3 and sum x^2 / n = 1, so the ridge slope
    #   is 2e-3 / (1 + penalty) and the intercept 1e-3.
    # validation rows t = 5..7: x = 1, -1, 1; y = 2, 0, 2 (1e-3) = 1e-3 + 1e-3 x exactly, so the validation MSE is
    #   zero at slope 1e-3, i.e. penalty 1, which is in the grid.
    # test bars 9..14: decisions at t = 9..13 with x = 2, -1.5, -4, 0.5, 1.5, so forecasts 1e-3 + 1e-3 x are
    #   3, -0.5, -3, 1.5, 2.5 (1e-3) against a cost of 20 bps = 2e-3 per unit traded.
    x = [-1, -1, 1, 1, 0, 1, -1, 1, 0, 2, -1.5, -4, 0.5, 1.5, 0]
    r = [-2e-3, 0, 2e-3, 4e-3, 0, 2e-3, 0, 2e-3, 0, 0.01, -0.005, 0.002, 0.003, -0.004, np.nan]
    return _tiny_market(x, r, Split(train=(0, 5), val=(5, 9), test=(9, 15)))


def test_linear_probe_matches_the_hand_computed_ridge_fit(tiny):
    probe = make_baselines(tiny, EnvConfig(fee_bps=10, slippage_bps=10))["linear_probe"]
    assert probe.fit.penalty == 1.0
    assert probe.fit.coef == pytest.approx([1e-3], rel=1e-9)
    assert probe.fit.intercept == pytest.approx(1e-3, rel=1e-9)
    assert min(probe.val_mse) == pytest.approx(0.0, abs=1e-18)
    # the slope at every penalty of the grid, 2e-3 / (1 + penalty)
    for p in LinearProbe.PENALTIES:
        assert fit_ridge([[-1], [-1], [1], [1]], [-2e-3, 0, 2e-3, 4e-3], p).coef[0] == pytest.approx(2e-3 / (1 + p))


def test_linear_probe_trades_when_the_forecast_clears_the_cost(tiny):
    env = EnvConfig(fee_bps=10, slippage_bps=10)
    res = evaluate_policy(make_baselines(tiny, env)["linear_probe"], tiny, part="test", env=env)
    # flat -> long at 3 > 2 (enter); -0.5 is inside the band, hold long; -3 < -2, exit; 1.5 < 2, stay flat; 2.5, long
    assert res.positions[0].tolist() == [1, 1, 0, 0, 1]
    c = 2e-3
    expect = (1 - c) * 1.01 * 0.995 * (1 - c) * 1.0 * 1.0 * (1 - c) * 0.996
    assert res.equity[0, -1] == pytest.approx(expect, rel=1e-12)
    # long_short, scores in 1e-3 at forecast -3 from long: short 3 - 2 * 2 = -1, flat -2, hold long -3, so short;
    # at 1.5 from short: hold -1.5, flat -2, long 1.5 - 4 = -2.5, so hold; at 2.5: long 2.5 - 4 = -1.5 beats -2 and -2.5
    env = EnvConfig(positions="long_short", fee_bps=10, slippage_bps=10)
    res = evaluate_policy(make_baselines(tiny, env)["linear_probe"], tiny, part="test", env=env)
    assert res.positions[0].tolist() == [1, 1, -1, -1, 1]


def test_cost_aware_actions_band():
    values = np.array([0.0, 1.0])
    mu = np.array([2.5e-3, 2.5e-3, 1e-3, 1e-3, -1e-3, -3e-3, 2e-3])
    held = np.array([0, 1, 0, 1, 1, 1, 0])
    # enter above c, hold inside the band, leave below -c; exactly at the cost nothing moves (no strict gain)
    assert cost_aware_actions(mu, held, values, 2e-3).tolist() == [1, 1, 0, 1, 1, 0, 0]
    assert cost_aware_actions(mu, held, values, 0.0).tolist() == [1, 1, 1, 1, 0, 0, 1]


def test_linear_probe_ignores_the_held_position(tiny):
    probe = make_baselines(tiny)["linear_probe"]
    obs = tiny.observe(np.arange(9, 14), np.zeros(5))
    held = obs.copy()
    held[:, -1] = 1.0
    assert np.array_equal(probe.expected_return(obs), probe.expected_return(held))
