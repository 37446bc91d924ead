"""Execution semantics: a hand-computed 5-bar example, no look-ahead, reward sum, single == vectorised."""

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dqlray.config import EnvConfig
from dqlray.data import OHLCV, Split, synth_market
from dqlray.env import ENV_ID, TradingEnv
from dqlray.features import compute_features
from dqlray.market import Market, first_decision_bar
from dqlray.vec_env import VecTradingEnv


def ohlcv_from_closes(closes: np.ndarray) -> OHLCV:
    closes = np.asarray(closes, dtype=np.float64)
    time = (np.datetime64("2020-01-01") + np.arange(len(closes))).astype("datetime64[ns]")
    return OHLCV(time=time, open=closes, high=closes * 1.01, low=closes * 0.99, close=closes)


def test_check_env_and_registration():
    env = TradingEnv(synth_market(400, seed=0), random_start=True, episode_length=50)
    check_env(env, skip_render_check=True)
    made = gym.make(ENV_ID, data=synth_market(400, seed=0))
    assert made.action_space.n == 2
    assert made.observation_space.shape == (8 * 8 + 1,)


def test_five_bar_hand_computed_example():
    prices = [100.0, 110.0, 99.0, 99.0, 108.9, 100.0]  # the last 6 bars = 5 decisions
    rng = np.random.default_rng(0)
    head = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 114)))
    head *= 100 / head[-1]  # bar 113 closes at 100, so the test part's first bar is the first of `prices`
    data = ohlcv_from_closes(np.concatenate([head[:-1], prices]))
    n = len(data)
    split = Split(train=(first_decision_bar(2), n - 12), val=(n - 12, n - 6), test=(n - 6, n))
    env = TradingEnv(Market.build(data, split, window=2), part="test", positions="long_short", fee_bps=7.0,
                     slippage_bps=3.0, ruin_fraction=0.0)
    env.reset(seed=0)
    # actions: 0 short, 1 flat, 2 long -> long, long, short, flat, long
    c = 0.001  # 10 bps of traded notional
    expected_growth = [
        (1 - c * 1) * (1 + 0.10),          # flat -> long, earns +10%
        (1 - c * 0) * (1 - 0.10),          # hold long, earns -10%
        (1 - c * 2) * (1 - 0.0),           # long -> short (2 units traded), price unchanged
        (1 - c * 1) * (1 + 0.0),           # short -> flat, misses the +10%
        (1 - c * 1) * (100.0 / 108.9),     # flat -> long, earns -8.17%
    ]
    value, costs = 1.0, 0.0
    traded_units = [1, 0, 2, 1, 1]
    for i, a in enumerate([2, 2, 0, 1, 2]):
        obs, reward, term, trunc, info = env.step(a)
        costs += value * c * traded_units[i]
        value *= expected_growth[i]
        assert reward == pytest.approx(math.log(expected_growth[i]), abs=1e-12)
        assert info["portfolio_value"] == pytest.approx(value, rel=1e-12)
        assert info["costs"] == pytest.approx(costs, rel=1e-12)
        assert obs[-1] == [1, 1, -1, 0, 1][i]
        assert not term
        assert trunc == (i == 4)
    assert info["trades"] == 4
    assert value == pytest.approx(1.0989 * 0.9 * 0.998 * 0.999 * 0.999 * 100 / 108.9, rel=1e-12)


def test_no_look_ahead():
    """Perturb every price after bar t: features, observations and actions up to t do not change."""
    base = synth_market(900, seed=5)
    market = Market.build(base)
    t = market.part("val")[0] + 40
    rng = np.random.default_rng(1)
    f = np.ones(len(base))
    f[t + 1:] = np.exp(rng.normal(0, 0.05, len(base) - t - 1))
    pert = OHLCV(time=base.time, open=base.open * f, high=base.high * f, low=base.low * f, close=base.close * f)
    raw_a, raw_b = compute_features(base), compute_features(pert)
    assert np.array_equal(raw_a[: t + 1], raw_b[: t + 1], equal_nan=True)
    assert not np.array_equal(raw_a[t + 1:], raw_b[t + 1:], equal_nan=True)
    m2 = Market.build(pert, market.split)  # the scaler is fitted on the training part, untouched here
    bars = np.arange(market.part("val")[0], t + 1)
    pos = np.zeros(len(bars))
    assert np.array_equal(market.observe(bars, pos), m2.observe(bars, pos))
    # A policy acting on those observations acts the same; the earned returns up to t are equal too.
    assert np.array_equal(market.ret_next[: t], m2.ret_next[: t])
    e1, e2 = TradingEnv(market, part="val"), TradingEnv(m2, part="val")
    o1, _ = e1.reset(seed=0)
    o2, _ = e2.reset(seed=0)
    for _ in range(t - market.part("val")[0]):
        a1, a2 = int(o1[-9] > 0) , int(o2[-9] > 0)  # a rule on the latest ret_1
        assert a1 == a2
        o1, r1, *_ = e1.step(a1)
        o2, r2, *_ = e2.step(a2)
        assert np.array_equal(o1, o2) and r1 == r2


def test_reward_sum_is_log_final_value():
    env = TradingEnv(synth_market(700, seed=2), positions="long_short", fee_bps=5, slippage_bps=5)
    env.reset(seed=3)
    total, done, info = 0.0, False, {}
    while not done:
        _, r, term, trunc, info = env.step(int(env.np_random.integers(3)))
        total += r
        done = term or trunc
    assert total == pytest.approx(math.log(info["portfolio_value"]), abs=1e-10)


def test_ruin_terminates():
    closes = np.concatenate([np.full(80, 100.0), 100 * 0.5 ** np.arange(1, 30)])
    data = ohlcv_from_closes(closes)
    n = len(data)
    m = Market.build(data, Split(train=(57, 75), val=(75, 80), test=(80, n)))
    env = TradingEnv(m, part="test", ruin_fraction=0.1)
    env.reset(seed=0)
    steps = 0
    term = trunc = False
    while not (term or trunc):
        _, _, term, trunc, info = env.step(1)
        steps += 1
    assert term and not trunc and info["portfolio_value"] <= 0.1 and steps == 4


@pytest.mark.parametrize("random_start, episode_length, positions", [(False, None, "long_flat"),
                                                                     (True, 40, "long_short")])
def test_single_and_vectorised_envs_agree(random_start, episode_length, positions):
    market = Market.build(synth_market(800, seed=9))
    kw = dict(positions=positions, fee_bps=2.0, slippage_bps=1.0, episode_length=episode_length,
              random_start=random_start)
    single = TradingEnv(market, **kw)
    vec = VecTradingEnv(market, 1, seeds=[123], env=EnvConfig(**kw))
    obs_s, _ = single.reset(seed=123)
    obs_v = vec.reset().copy()
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(1500):
        assert np.array_equal(obs_s, obs_v[0])
        a = int(rng.integers(single.action_space.n))
        obs_s, r, term, trunc, info = single.step(a)
        step = vec.step(np.array([a]))
        assert r == step.reward[0] and term == step.terminated[0] and trunc == step.truncated[0]
        assert info["portfolio_value"] == step.portfolio_value[0]
        obs_v = step.obs.copy()
        if term or trunc:
            episodes += 1
            obs_s, _ = single.reset()
    assert episodes >= 2


def test_vectorised_env_seeds_are_independent():
    market = Market.build(synth_market(800, seed=9))
    ec = EnvConfig(random_start=True, episode_length=30)
    a = VecTradingEnv(market, 3, seeds=[1, 2, 3], env=ec)
    b = VecTradingEnv(market, 1, seeds=[2], env=ec)
    a.reset()
    b.reset()
    for _ in range(200):
        sa = a.step(np.array([1, 0, 1]))
        sb = b.step(np.array([0]))
        assert np.array_equal(sa.obs[1], sb.obs[0]) and sa.reward[1] == sb.reward[0]
