"""Planted-edge and null markets (issue 12): the edge is the exact conditional mean of the paid return, given the
features of bar t only; null markets have no serial dependence; the planted rule and the linear probe find edges."""

import subprocess
import sys

import numpy as np
import pytest

from dqlray.baselines import make_baselines
from dqlray.config import EnvConfig
from dqlray.data import load_ohlcv
from dqlray.errors import DataError
from dqlray.evaluation import evaluate_policy
from dqlray.features import FEATURE_NAMES, compute_features
from dqlray.market import Market
from dqlray.planted import (
    DEFAULT_STRENGTH,
    EDGES,
    KINDS,
    REVERSION_RATIO,
    VOL_THRESHOLD,
    Edge,
    PlantedRule,
    planted_market,
)


def _features(data):
    raw = compute_features(data)
    return {name: raw[:, FEATURE_NAMES.index(name)] for name in ("ret_1", "ret_20", "vol_20")}


def _returns(data):
    p = data.close
    return p[1:] / p[:-1] - 1.0


@pytest.mark.parametrize("kind", EDGES)
def test_the_edge_is_a_function_of_bar_t_features_only(kind):
    # The same seed gives the same shocks at any strength, so R[t+1] - m(features of t) must be the same noise in
    # the planted market and in the edge-free one. Planting on bar t+1's features, or on anything but what the
    # features show, would break this equality.
    n = 1500
    edge = Edge(kind=kind, strength=DEFAULT_STRENGTH[kind])
    planted, free = planted_market(n, edge, seed=3), planted_market(n, Edge(kind=kind, strength=0.0), seed=3)
    t = np.arange(60, n - 1)
    noise = []
    for e, d in ((edge, planted), (Edge(kind=kind, strength=0.0), free)):
        f = _features(d)
        m = e.expected_return(f["ret_1"][t], f["ret_20"][t], f["vol_20"][t])
        noise.append(_returns(d)[t] - m)
    assert np.abs(noise[0] - noise[1]).max() < 1e-6  # prices are rounded to 6 decimals
    assert np.abs(noise[0]).mean() > 1e-3  # and the noise is real
    # the edge is not nothing: it moves the expected return by more than the costs on many bars
    f = _features(planted)
    gap = np.abs(edge.expected_return(f["ret_1"][t], f["ret_20"][t], f["vol_20"][t]) - edge.drift)
    assert (gap > 2e-4).mean() > 0.3


def test_same_seed_same_market_and_kinds_differ():
    a = planted_market(300, Edge(kind="linear", strength=0.1), seed=1)
    b = planted_market(300, Edge(kind="linear", strength=0.1), seed=1)
    c = planted_market(300, Edge(kind="trend", strength=0.1), seed=1)
    assert np.array_equal(a.close, b.close) and np.array_equal(a.high, b.high)
    assert not np.array_equal(a.close, c.close)
    for d in (a, c, planted_market(300, Edge(kind="iid"), seed=1), planted_market(300, Edge(kind="shuffled"), seed=1)):
        assert (d.low <= np.minimum(d.open, d.close)).all() and (d.high >= np.maximum(d.open, d.close)).all()


def _autocorr(x, lag=1):
    x = x - x.mean()
    return float(x[lag:] @ x[:-lag] / (x @ x))


def test_null_markets_have_no_serial_dependence():
    n = 20_000
    regimes = _returns(planted_market(n, Edge(kind="linear", strength=0.0), seed=0))
    iid = _returns(planted_market(n, Edge(kind="iid"), seed=0))
    shuffled = _returns(planted_market(n, Edge(kind="shuffled"), seed=0))
    bound = 3 / np.sqrt(n)
    assert _autocorr(np.abs(regimes)) > 5 * bound  # the regime market's volatility clusters (timeable)...
    for r in (iid, shuffled):
        for lag in (1, 2, 5):
            assert abs(_autocorr(r, lag)) < bound and abs(_autocorr(np.abs(r), lag)) < bound
    # ...shuffling keeps its distribution (same days, another order)
    assert np.std(shuffled) == pytest.approx(np.std(regimes), rel=0.05)


def test_interaction_edge_has_almost_no_linear_content():
    n = 40_000
    d = planted_market(n, Edge(kind="interaction", strength=0.3), seed=5)
    f = _features(d)
    t = np.arange(60, n - 1)
    x, y, calm = f["ret_1"][t], _returns(d)[t], f["vol_20"][t] < VOL_THRESHOLD

    def slope(mask):
        xm = x[mask] - x[mask].mean()
        return float(xm @ (y[mask] - y[mask].mean()) / (xm @ xm))

    assert slope(calm) == pytest.approx(0.3, abs=0.05)  # momentum when calm
    assert slope(~calm) == pytest.approx(-0.3 * REVERSION_RATIO, abs=0.05)  # reversion when turbulent
    assert abs(slope(np.ones_like(calm))) < 0.05  # pooled: the two cancel


@pytest.fixture(scope="module")
def linear_market():
    edge = Edge(kind="linear", strength=0.3)
    return edge, Market.build(planted_market(4000, edge, seed=2))


def test_planted_rule_reads_the_edge_from_the_observation(linear_market):
    edge, market = linear_market
    rule = PlantedRule(market, "long_flat", edge, cost_rate=2e-4)
    a, z = market.part("test")
    bars = np.arange(a, z)
    obs = market.observe(bars, np.zeros(len(bars)))
    f = _features(market.data)
    expect = edge.expected_return(f["ret_1"][bars], f["ret_20"][bars], f["vol_20"][bars])
    assert np.abs(rule.expected_return(obs) - expect).max() < 1e-6  # float32 observations
    assert set(rule.predict(obs)) == {0, 1}


def test_rule_and_probe_find_a_strong_linear_edge(linear_market):
    edge, market = linear_market
    kw = dict(part="test", env=EnvConfig(fee_bps=1, slippage_bps=1))
    rule = evaluate_policy(PlantedRule(market, "long_flat", edge, cost_rate=2e-4), market, **kw).metrics[0]
    base = make_baselines(market)
    probe = evaluate_policy(base["linear_probe"], market, **kw).metrics[0]
    bh = evaluate_policy(base["buy_and_hold"], market, **kw).metrics[0]
    assert rule["sharpe"] > bh["sharpe"] + 1.0 and probe["sharpe"] > bh["sharpe"] + 1.0
    # the probe's largest weight is on the last bar's one-bar return, positive like the planted autocorrelation
    coef = base["linear_probe"].fit.coef
    last_ret_1 = (market.window - 1) * market.n_features + FEATURE_NAMES.index("ret_1")
    assert coef[last_ret_1] > 0 and np.argmax(np.abs(coef)) == last_ret_1


def test_bad_edges_are_refused():
    with pytest.raises(DataError, match="edge 'wobbly' is not one of linear, trend, interaction, iid, shuffled"):
        Edge(kind="wobbly")
    with pytest.raises(DataError, match="strength=-0.1 must be a number >= 0"):
        Edge(kind="linear", strength=-0.1)
    with pytest.raises(DataError, match="trend strength=1.0 must be < 1"):
        Edge(kind="trend", strength=1.0)
    with pytest.raises(DataError, match="n=10 is too short"):
        planted_market(10, Edge(kind="linear"), seed=0)


def test_data_synth_edge_command(tmp_path):
    from dqlray.cli import build_parser

    synth = build_parser()._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0].choices["synth"]
    edge_action = next(a for a in synth._actions if a.dest == "edge")
    assert tuple(edge_action.choices) == KINDS
    out = tmp_path / "m.csv"
    proc = subprocess.run([sys.executable, "-m", "dqlray", "data", "synth", "--bars", "400", "--edge", "trend",
                           "--seed", "4", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "edge trend, strength 0.4" in proc.stdout
    loaded = load_ohlcv(out)
    again = planted_market(400, Edge(kind="trend", strength=DEFAULT_STRENGTH["trend"]), seed=4)
    assert np.allclose(loaded.close, again.close, rtol=0, atol=1e-6)
    for args, msg in ((["--edge", "linear", "--strength", "-1"], "strength=-1.0 must be a number >= 0"),
                      (["--strength", "0.1"], "--strength needs --edge"),
                      (["--edge", "linear", "--ar", "0.1"], "with --edge use --strength")):
        bad = subprocess.run([sys.executable, "-m", "dqlray", "data", "synth", "--out", str(tmp_path / "x.csv"),
                              *args], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and msg in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
