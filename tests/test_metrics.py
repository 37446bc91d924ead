"""Metrics against hand-computed values (definitions in shared/notes/trading-rl.md)."""

import math
import statistics
from statistics import NormalDist

import numpy as np
import pytest

from dqlray import metrics as M

R = np.array([0.10, -0.05, 0.02, 0.0, -0.01])


def test_total_return_and_cagr():
    growth = 1.10 * 0.95 * 1.02 * 1.0 * 0.99
    assert M.total_return(R) == pytest.approx(growth - 1)
    assert M.cagr(R, periods=5) == pytest.approx(growth - 1)  # five periods = one year
    assert M.cagr(R, periods=10) == pytest.approx(growth**2 - 1)


def test_volatility_sharpe_sortino():
    sd = statistics.stdev(R.tolist())
    mean = sum(R.tolist()) / 5
    assert M.annual_volatility(R, periods=4) == pytest.approx(sd * 2)
    assert M.sharpe(R, periods=4) == pytest.approx(mean / sd * 2)
    downside = math.sqrt((0.05**2 + 0.01**2) / 5)
    assert M.sortino(R, periods=4) == pytest.approx(mean / downside * 2)
    assert M.sharpe(np.zeros(10)) == 0.0


def test_max_drawdown_includes_start_and_calmar():
    assert M.max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(-0.1)
    v = [1.0, 1.1, 1.045, 1.0659, 1.0659, 1.055241]
    assert M.max_drawdown(R) == pytest.approx(min(x / max(v[: i + 1]) for i, x in enumerate(v)) - 1)
    assert M.calmar(R, periods=5) == pytest.approx(M.cagr(R, 5) / abs(M.max_drawdown(R)))


def test_win_rate_turnover_exposure_trades():
    assert M.win_rate(R) == pytest.approx(2 / 4)  # the zero period is not counted
    traded = np.array([1.0, 0.0, 2.0, 1.0, 0.0])
    assert M.turnover(traded, periods=10) == pytest.approx(4.0 * 10 / 5)
    assert M.num_trades(traded) == 3
    assert M.exposure(np.array([1, 1, -1, 0, 0])) == pytest.approx(0.6)


def test_deflated_sharpe():
    rng = np.random.default_rng(0)
    r = rng.normal(0.001, 0.01, 1000)
    one = M.deflated_sharpe(r, np.array([1.0]))
    assert one["sr0"] == 0.0
    # with N = 1 the DSR is the probabilistic Sharpe ratio against 0
    sr = r.mean() / r.std(ddof=1)
    z = (r - r.mean()) / r.std()
    g3, g4 = (z**3).mean(), (z**4).mean()
    psr = NormalDist().cdf(sr * math.sqrt(999) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))
    assert one["dsr"] == pytest.approx(psr)
    trial_sharpes = rng.normal(0.5, 0.5, 27)
    many = M.deflated_sharpe(r, trial_sharpes)
    assert many["sr0"] > 0 and many["dsr"] < one["dsr"]
    more = M.deflated_sharpe(r, rng.normal(0.5, 0.5, 200))
    assert more["sr0"] > many["sr0"]
    assert many["n_trials"] == 27


def test_deflated_sharpe_expected_maximum_by_hand():
    # Three trials with annual Sharpe 0, 0.5 and 1: their per-period spread is 0.5 / sqrt(252). With
    # Phi^-1(2/3) = 0.430727 and Phi^-1(1 - 1/(3e)) = 1.161957 the expected best of 3 unskilled trials is
    # 0.5 * ((1 - 0.577216) * 0.430727 + 0.577216 * 1.161957) = 0.426402 (annualised).
    r = np.random.default_rng(0).normal(0, 0.01, 300)
    assert M.deflated_sharpe(r, np.array([0.0, 0.5, 1.0]))["sr0"] == pytest.approx(0.426402, abs=2e-6)
