"""The verdict (issue 11): PBO by hand and on noise, the bootstrap against theory, the habit-keeping null, the pins."""

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from dqlray import verdict as V
from dqlray.baselines import BuyAndHold
from dqlray.config import EnvConfig, VerdictConfig
from dqlray.data import synth_market
from dqlray.errors import ConfigError
from dqlray.evaluation import evaluate_policy
from dqlray.market import Market
from dqlray.metrics import deflated_sharpe

FAST = VerdictConfig(n_boot=499, n_null=499)
COST = 2e-4  # the default 1 bp fee + 1 bp slippage


class LongBiased:
    """Random timing, long 80% of the time: a coin with a habit, no skill."""

    def __init__(self, p: float, seed: int) -> None:
        self.p = p
        self.rng = np.random.default_rng(seed)

    def predict(self, obs: np.ndarray) -> np.ndarray:
        return (self.rng.random(len(obs)) < self.p).astype(np.int64)


class FollowLastBar:
    """Long after an up bar: a real edge on a market with planted autocorrelation."""

    def __init__(self, market: Market) -> None:
        self.market = market

    def predict(self, obs: np.ndarray) -> np.ndarray:
        return (self.market.raw_feature("ret_1", obs) > 0).astype(np.int64)


def run_policy(policy, market: Market, n_envs: int = 1):
    agent = evaluate_policy(policy, market, part="test", n_envs=n_envs)
    bench = evaluate_policy(BuyAndHold(market, "long_flat"), market, part="test").returns[0]
    return agent, bench, V.part_returns(market, "test")


# ------------------------------------------------------------------------------------------------------------ PBO


def hand_case() -> np.ndarray:
    # S = 4 blocks of 2 bars, 3 trials. Block types: G = [3, 1] (mean 2), D = [-1, -3] (mean -2), c = [1.2, -0.8]
    # (mean 0.2). A = G G D D, B = D D G G, C = c c c c. Per-bar IR of two blocks (4 bars, sd with ddof=1):
    #   G G: 2 / sd(3,1,3,1) = 2 / 1.155 = +1.73;  D D: -1.73;  G D or D G: mean 0, IR 0;  c c: 0.2 / 1.155 = +0.17.
    # The 6 in-sample choices of 2 blocks:
    #   IS {1,2}: A +1.73, B -1.73, C +0.17 -> best A; OOS {3,4}: A -1.73 < C +0.17 < B +1.73: A ranks 1 of 3,
    #             w = 1/4, logit ln(1/3) = -1.0986.
    #   IS {3,4}: best B (+1.73); OOS {1,2}: B -1.73 ranks 1, logit -1.0986.
    #   IS {1,3}, {1,4}, {2,3}, {2,4}: A and B are G D or D G (IR 0), C +0.17 -> best C; OOS likewise A 0, B 0,
    #             C +0.17: C ranks 3, w = 3/4, logit ln 3 = +1.0986.
    # PBO = 2 / 6 = 1/3; logit mean (4 - 2) ln 3 / 6 = ln(3) / 3; median ln 3.
    g, d, c = [3, 1], [-1, -3], [1.2, -0.8]
    return np.array([g + g + d + d, d + d + g + g, c * 4], dtype=float).T  # (T=8, N=3)


def test_pbo_by_hand():
    res = V.pbo_cscv(hand_case(), n_blocks=4)
    assert res.n_splits == 6 and res.n_blocks == 4 and res.n_columns == 3
    assert res.pbo == pytest.approx(1 / 3)
    assert res.logit_mean == pytest.approx(math.log(3) / 3)
    assert res.logit_median == pytest.approx(math.log(3))
    # Seeds: two identical seeds average to the same IRs, so the same PBO; a (T, N, K) input is ranked by the mean.
    two = np.stack([hand_case(), hand_case()], axis=2)
    assert V.pbo_cscv(two, n_blocks=4) == res


def test_pbo_noise_near_half_and_planted_edge_near_zero():
    noise, edge = [], []
    for s in range(20):
        x = np.random.default_rng(s).standard_normal((400, 20, 2)) * 0.01
        noise.append(V.pbo_cscv(x, n_blocks=8).pbo)
        x[:, 5, :] += 0.003  # one column with an edge of 0.3 sd per bar
        edge.append(V.pbo_cscv(x, n_blocks=8).pbo)
    # One noise matrix gives a PBO anywhere in about [0.1, 0.8] (the splits share their data); the mean is ~0.5.
    assert 0.4 < np.mean(noise) < 0.65
    assert max(edge) < 0.05


def test_pbo_fewer_blocks_when_short_and_a_seeded_subset_when_splits_are_many():
    x = np.random.default_rng(0).standard_normal((10, 4))
    assert V.pbo_cscv(x).n_blocks == 4  # 16 asked; 10 bars give at most 5 blocks of 2 bars, so 4
    y = np.random.default_rng(1).standard_normal((200, 6, 2))
    a = V.pbo_cscv(y, n_blocks=16, max_splits=50, rng=np.random.default_rng(7))
    b = V.pbo_cscv(y, n_blocks=16, max_splits=50, rng=np.random.default_rng(7))
    assert a.n_splits == 50 and a == b
    with pytest.raises(ValueError, match="at least 2 trial columns"):
        V.pbo_cscv(y[:, :1])
    with pytest.raises(ValueError, match="n_blocks=5 must be an even integer"):
        V.pbo_cscv(y, n_blocks=5)


# ------------------------------------------------------------------------------------------------------ check 1


@pytest.mark.filterwarnings("ignore:divide by zero", "ignore:invalid value")  # 8 bars: both divide by 0
def test_block_length_equals_arch():
    # The verdict's own port of Politis and White's block length gives arch's value: on white noise (m from the
    # autocorrelation band), on an AR(1) (a long block), on a short series, and on the clipped large-T case.
    from arch.bootstrap import optimal_block_length

    rng = np.random.default_rng(7)
    ar = np.zeros(2000)
    e = rng.normal(size=2000)
    for t in range(1, 2000):
        ar[t] = 0.7 * ar[t - 1] + e[t]
    series = [rng.normal(size=990), ar, rng.normal(size=40), np.cumsum(rng.normal(size=3000)),
              rng.standard_t(3, size=388) * 0.01]
    for x in series:
        want = float(optimal_block_length(x)["stationary"].iloc[0])
        assert V.optimal_block_length(x) == pytest.approx(want, rel=1e-10)
    assert V.optimal_block_length(ar) > 5  # serial dependence asks for long blocks; the test is not of a constant
    # too short to estimate (arch raises there): the verdict's bootstrap falls back to blocks of one bar
    short = rng.normal(size=7)
    with pytest.raises(ValueError):
        optimal_block_length(short)
    assert math.isnan(V.optimal_block_length(short)) and V._block_length(short) == 1.0
    eight = rng.normal(size=8)  # the shortest series arch estimates: the same value
    assert V.optimal_block_length(eight) == pytest.approx(float(optimal_block_length(eight)["stationary"].iloc[0]),
                                                          rel=1e-10)


def test_bootstrap_with_block_length_1_matches_normal_theory():
    # iid normal returns, block length 1: the stationary bootstrap is the iid bootstrap, and the Sharpe estimate is
    # about normal with se sqrt((1 + SR^2 / 2) / T) per bar (Lo 2002). So the 90% interval is SR +- 1.645 se and
    # the one-sided p-value 1 - Phi(SR / se), up to bootstrap noise.
    z = NormalDist().inv_cdf(0.95)
    for s in range(3):
        x = np.random.default_rng(s).normal(0.0006, 0.01, (1, 750))
        c = V.benchmark_check(x, n_boot=4000, ci_level=0.9, rng=np.random.default_rng(1), block_length=1.0)
        sr = x.mean() / x.std(ddof=1)
        se = math.sqrt((1 + sr**2 / 2) / 750)
        assert c.info_ratio == pytest.approx(sr * math.sqrt(252))
        assert c.ci[0] == pytest.approx((sr - z * se) * math.sqrt(252), abs=0.08)
        assert c.ci[1] == pytest.approx((sr + z * se) * math.sqrt(252), abs=0.08)
        assert c.p_value == pytest.approx(1 - NormalDist().cdf(sr / se), abs=0.02)


def test_bootstrap_p_value_on_sparse_active_returns():
    # Long all the time but flat over one crash bar: the active returns are 0 except +1% on that bar and a 2 bp
    # re-entry cost after it (T = 100). SPA recentres the resampled mean (block length 1: iid) and asks how often
    # it lies as far above the sample mean as the mean lies above 0: when a resample holds the crash bar k1 >= 3
    # times, or twice with the cost bar at most twice. With k1 ~ Bin(100, 1/100) and, given k1 = 2,
    # k2 ~ Bin(98, 1/99): P = P(k1 >= 3) + P(k1 = 2) P(k2 <= 2) = 0.0794 + 0.1849 * 0.9220 = 0.2499. One lucky bar
    # is no evidence. (The percentile interval still contains 0: a resample misses the bar with probability 0.366.)
    a = np.zeros((1, 100))
    a[0, 40], a[0, 41] = 0.01, -2e-4
    c = V.benchmark_check(a, n_boot=4999, ci_level=0.95, rng=np.random.default_rng(0), block_length=1.0)
    assert c.info_ratio > 1.0
    assert c.p_value == pytest.approx(0.2499, abs=0.02)
    assert c.ci[0] < 0 < c.ci[1]


def test_spa_p_value_matches_arch_and_hansens_recentring():
    # One model against a zero benchmark, on the same resamples (arch's own bootstrap, same seed): arch's SPA gives
    # the same p-value, up to the (1 + k) / (1 + B) grid and ties (continuous data here: none).
    from arch.bootstrap import SPA, StationaryBootstrap

    rng = np.random.default_rng(0)
    for drift in (0.0004, 0.0008, 0.002):
        d = rng.standard_t(4, 500) * 0.01 + drift
        assert d.mean() > 0
        means = StationaryBootstrap(3.0, d, seed=np.random.default_rng(1)).apply(lambda y: np.array([y.mean()]),
                                                                                 4999)[:, 0]
        spa = SPA(np.zeros(500), -d[:, None], block_size=3.0, reps=4999, bootstrap="stationary", nested=False,
                  seed=np.random.default_rng(1))
        spa.compute()
        ours = V.spa_p_value(d, means, block_length=3.0)
        assert ours == pytest.approx((1 + 4999 * float(spa.pvalues["consistent"])) / 5000, abs=1e-9)
    # Hansen's statistic is max(mean, 0): a model that does no better than the benchmark has p = 1 (arch: ~1/2).
    d = rng.normal(-0.003, 0.01, 500)
    assert V.spa_p_value(d, rng.normal(d.mean(), 0.0005, 999), block_length=1.0) == 1.0


def test_stationary_indices_follow_the_scheme():
    idx = V.stationary_indices(50, 4.0, 4000, np.random.default_rng(0))
    assert idx.shape == (4000, 50) and idx.min() == 0 and idx.max() == 49
    follows = idx[:, 1:] == (idx[:, :-1] + 1) % 50  # within a block the next bar follows (wrapping at the end)
    # a new block starts with probability 1/4 at a uniform bar (which follows the previous one by chance: 1/50)
    assert 1 - follows.mean() == pytest.approx(0.25 * 49 / 50, abs=0.01)
    assert np.bincount(idx.ravel(), minlength=50) / idx.size == pytest.approx(np.full(50, 0.02), abs=0.002)
    assert np.array_equal(V.stationary_indices(50, 4.0, 10, np.random.default_rng(3)),
                          V.stationary_indices(50, 4.0, 10, np.random.default_rng(3)))


def test_bootstrap_resamples_seeds_jointly_and_the_benchmark_cannot_beat_itself():
    # Two identical seeds: resampled with the same time indices they stay identical, so the result equals one seed's.
    x = np.random.default_rng(3).normal(0.0003, 0.01, (1, 500))
    one = V.benchmark_check(x, n_boot=999, ci_level=0.95, rng=np.random.default_rng(5))
    two = V.benchmark_check(np.vstack([x, x]), n_boot=999, ci_level=0.95, rng=np.random.default_rng(5))
    assert one.block_length == two.block_length and one.p_value == two.p_value
    assert two.ci == pytest.approx(one.ci)
    zero = V.benchmark_check(np.zeros((2, 300)), n_boot=199, ci_level=0.95, rng=np.random.default_rng(0))
    assert zero.info_ratio == 0.0 and zero.ci == (0.0, 0.0) and zero.p_value == 1.0 and zero.block_length == 1.0


# ------------------------------------------------------------------------------------------------------ check 2


def runs(p: np.ndarray) -> list[tuple[float, int]]:
    cut = np.flatnonzero(np.diff(p)) + 1
    return [(float(seg[0]), len(seg)) for seg in np.split(p, cut)]


@pytest.mark.parametrize("states", [(0.0, 1.0), (-1.0, 0.0, 1.0)])
def test_shuffle_keeps_exposure_and_trades_exactly(states):
    rng = np.random.default_rng(0)
    pos = np.repeat(rng.choice(states, 60), rng.integers(1, 9, 60))  # random stretches, some neighbours equal
    nulls = V.shuffle_stretches(pos, 300, np.random.default_rng(1), segments=[0, 100])
    assert nulls.shape == (300, len(pos))
    for seg in (slice(0, 100), slice(100, None)):
        orig = runs(pos[seg])
        for q in nulls[:, seg]:
            got = runs(q)
            assert [s for s, _ in got] == [s for s, _ in orig]  # the same stretches in the same order
            for v in states:  # the same bars in each position, so the same exposure
                assert np.count_nonzero(q == v) == np.count_nonzero(pos[seg] == v)
    traded = np.abs(np.diff(nulls, axis=1, prepend=0.0))  # traded notional, the first entry from flat included
    assert np.all(traded.sum(axis=1) == np.abs(np.diff(pos, prepend=0.0)).sum())
    assert np.all(np.count_nonzero(traded, axis=1) == np.count_nonzero(np.diff(pos, prepend=0.0)))
    assert len({q.tobytes() for q in nulls}) > 250  # and the timing really moves


def test_null_returns_come_from_the_env_pricing():
    m = Market.build(synth_market(900, seed=2))
    ev = evaluate_policy(LongBiased(0.5, 1), m, part="test", n_envs=3, env=EnvConfig(positions="long_flat"))
    priced = V.price_positions(ev.positions, V.part_returns(m, "test"), COST)
    assert np.max(np.abs(priced - ev.returns)) < 1e-12
    ls = evaluate_policy(LongBiased(0.5, 2), m, part="test", n_envs=2,
                         env=EnvConfig(positions="long_short", fee_bps=3.0))
    priced = V.price_positions(ls.positions, V.part_returns(m, "test"), 4e-4)
    assert np.max(np.abs(priced - ls.returns)) < 1e-12


def test_timing_p_value_counts_ties_against_the_agent():
    # Always long: every null is the agent itself, so p = (1 + n) / (1 + n) = 1.
    ret = np.random.default_rng(0).normal(0.001, 0.01, 200)
    pos = np.ones((2, 200))
    bench = V.price_positions(pos[0], ret, COST)
    assert V.timing_check(pos, bench, ret_next=ret, cost_rate=COST, n_null=199, rng=np.random.default_rng(0)
                          ).p_value == 1.0


# ----------------------------------------------------------------------------------------------- the verdicts


def test_long_biased_random_policy_on_a_drifting_market_does_not_beat_buy_and_hold():
    m = Market.build(synth_market(1500, seed=0, drift=0.001))
    agent, bench, ret = run_policy(LongBiased(0.8, 0), m, n_envs=4)
    v = V.single_run_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=COST, config=FAST)
    # The zero null is fooled: a high Sharpe, and a DSR against zero near 1 ...
    assert v.agent_sharpe > 2.0
    assert all(deflated_sharpe(r, np.array([0.0]))["dsr"] > 0.95 for r in agent.returns)
    # ... the verdict is not.
    assert v.beats_benchmark is False and v.info_ratio < 0 and v.p_benchmark > 0.5
    assert v.statement.startswith("The agent does not beat buy-and-hold: information ratio -")
    assert v.dsr_active is None and v.pbo is None and v.n_trials is None and v.seeds == 4


def test_a_planted_edge_beats_buy_and_hold():
    m = Market.build(synth_market(2500, seed=0, ar=0.5))
    agent, bench, ret = run_policy(FollowLastBar(m), m)
    v = V.single_run_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=COST, config=FAST)
    assert v.beats_benchmark is True and v.p_benchmark <= 0.01 and v.p_random <= 0.01
    assert v.info_ratio_ci[0] > 0 and v.info_ratio > 1.0
    assert v.statement.startswith("The agent beats buy-and-hold out of sample: information ratio +")
    assert "warning" not in v.statement
    assert "test bars and one policy;" in v.statement  # one seed, or one ensemble: never "1 seed(s)"


def test_same_seed_same_verdict_and_json():
    m = Market.build(synth_market(1200, seed=4))
    agent, bench, ret = run_policy(LongBiased(0.6, 3), m, n_envs=2)
    a = V.single_run_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=COST, config=FAST)
    b = V.single_run_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=COST, config=FAST)
    assert a == b
    c = V.single_run_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=COST,
                             config=VerdictConfig(n_boot=499, n_null=499, resample_seed=1))
    assert (c.p_benchmark, c.p_random) != (a.p_benchmark, a.p_random) and c.info_ratio == a.info_ratio
    d = json.loads(json.dumps(a.to_dict()))
    for key in ("benchmark", "beats_benchmark", "info_ratio", "info_ratio_ci", "p_benchmark", "p_random",
                "dsr_active", "pbo", "n_trials", "statement"):
        assert key in d
    assert d["benchmark"] == "buy_and_hold" and len(d["info_ratio_ci"]) == 2
    assert V.information_ratio(agent.returns, bench) == pytest.approx(a.info_ratio)


def test_sweep_verdict_deflates_on_validation_and_warns():
    m = Market.build(synth_market(1500, seed=0, drift=0.001))
    agent, bench, ret = run_policy(LongBiased(0.8, 0), m, n_envs=2)
    rng = np.random.default_rng(0)
    val_bench = rng.normal(0.0004, 0.01, 300)
    val = val_bench[:, None, None] + rng.normal(0, 0.004, (300, 12, 2))  # 12 unskilled trials, 2 seeds
    irs = V.trial_information_ratios(val - val_bench[:, None, None])
    winner = int(np.argmax(irs))
    v = V.sweep_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=COST, val_returns=val,
                        val_benchmark_returns=val_bench, winner=winner, n_trials=12, config=FAST)
    assert v.n_trials == 12 and v.val_info_ratio == pytest.approx(irs[winner])
    assert v.dsr_active is not None and v.dsr_active < 0.95 and v.pbo is not None and v.pbo_splits == 12870
    assert v.statement.startswith("The tuned agent does not beat buy-and-hold:")
    assert "warning: the deflated Sharpe of its validation information ratio" in v.statement
    assert "as the best of 12 candidates tried" in v.statement and "test bars and 2 seeds;" in v.statement
    # Counting more choices (checkpoints) raises the bar the winner must clear.
    more = V.deflated_active(val - val_bench[:, None, None], winner, 100)
    assert more["sr0"] > v.expected_max_info_ratio and more["dsr"] < v.dsr_active
    with pytest.raises(ValueError, match="n_trials=5 is fewer than the 12 trial columns"):
        V.sweep_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=COST, val_returns=val,
                        val_benchmark_returns=val_bench, winner=0, n_trials=5, config=FAST)


def test_deflated_sharpe_of_a_given_statistic():
    r = np.random.default_rng(0).normal(0.0005, 0.01, 400)
    base = deflated_sharpe(r, np.array([0.0, 0.5, 1.0]))
    # observed replaces the Sharpe of r (r keeps giving T and the moments); n_trials replaces len(trial_sharpes).
    same = deflated_sharpe(r, np.array([0.0, 0.5, 1.0]), observed=base["sharpe"], n_trials=3)
    assert same == base
    assert deflated_sharpe(r, np.array([0.0, 0.5, 1.0]), observed=3.0)["dsr"] > base["dsr"]
    assert deflated_sharpe(r, np.array([0.0, 0.5, 1.0]), n_trials=30)["sr0"] > base["sr0"]


def test_walk_forward_segments_start_flat_and_shuffle_within_folds():
    m = Market.build(synth_market(1500, seed=5))
    parts = [run_policy(LongBiased(0.5, s), m, n_envs=2) for s in (1, 2)]  # two "folds" on the same bars
    r = np.concatenate([p[0].returns for p in parts], axis=1)
    pos = np.concatenate([p[0].positions for p in parts], axis=1)
    bench = np.concatenate([p[1] for p in parts])
    ret = np.concatenate([p[2] for p in parts])
    t0 = parts[0][0].returns.shape[1]
    v = V.single_run_verdict(r, pos, bench, ret_next=ret, cost_rate=COST, segments=[0, t0], config=FAST)
    assert v.folds == 2 and v.bars == 2 * t0
    # Without the fold boundary the second fold's first entry (from flat, as evaluated) would be priced from the
    # first fold's last position: seed 1 is long at both sides of the boundary here.
    assert pos[1, t0 - 1] == 1.0 and pos[1, t0] == 1.0
    with pytest.raises(ValueError, match="differ from its positions priced"):
        V.single_run_verdict(r, pos, bench, ret_next=ret, cost_rate=COST, config=FAST)
    # Each fold's null keeps that fold's exposure.
    nulls = V.shuffle_stretches(pos[0], 50, np.random.default_rng(0), segments=[0, t0])
    assert np.all(nulls[:, :t0].sum(axis=1) == pos[0, :t0].sum())


def test_inputs_from_other_bars_or_costs_are_refused():
    m = Market.build(synth_market(1200, seed=4))
    agent, bench, ret = run_policy(LongBiased(0.6, 3), m)
    with pytest.raises(ValueError, match="differ from its positions priced on ret_next at cost_rate 0.001"):
        V.single_run_verdict(agent.returns, agent.positions, bench, ret_next=ret, cost_rate=1e-3, config=FAST)
    with pytest.raises(ValueError, match="ret_next: expected shape"):
        V.single_run_verdict(agent.returns, agent.positions, bench, ret_next=ret[1:], cost_rate=COST, config=FAST)
    with pytest.raises(ValueError, match="at least 20 test bars"):
        V.single_run_verdict(agent.returns[:, :10], agent.positions[:, :10], bench[:10], ret_next=ret[:10],
                             cost_rate=COST, config=FAST)


def test_verdict_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="verdict.benchmark='spy' is not allowed: one of buy_and_hold"):
        VerdictConfig(benchmark="spy")
    with pytest.raises(ConfigError, match="verdict.level=0.5 is not allowed"):
        VerdictConfig(level=0.5)
    with pytest.raises(ConfigError, match="verdict.pbo_blocks=7 is not allowed: an even integer"):
        VerdictConfig(pbo_blocks=7)
    assert "the MA crossover" in V.benchmark_label("ma_crossover")
