"""The pieces of bench/power.py that decide its figures (issue 12): markets, pool sampling, regret, variants."""

import math

import numpy as np
import pytest

from bench.power import _parse_variants, market_specs, regret, sample_pool, score_config
from dqlray.tuning.space import parse_sweep_file, trial_config


def test_regret_is_normalised_by_the_pool_spread():
    pool = np.array([0.0, 0.2, 0.4, 1.0, 0.6])  # oracle 1.0, median 0.4
    assert regret(pool, 1.0) == 0.0
    assert regret(pool, 0.4) == 1.0
    assert math.isclose(regret(pool, 0.94), 0.1)
    assert regret(pool, 1.3) < 0  # a pick outside the pool can beat its oracle
    assert math.isnan(regret(np.array([0.5, 0.5, 0.5]), 0.5))


def test_markets_dev_and_report_do_not_overlap():
    dev, rep = market_specs("dev", False), market_specs("report", False)
    assert {(m.kind, m.seed) for m in dev}.isdisjoint({(m.kind, m.seed) for m in rep})
    assert {m.kind for m in rep if m.planted} == {"linear", "trend", "interaction"}
    assert sum(m.planted for m in rep) == 9 and sum(not m.planted for m in rep) == 4
    quick = market_specs("report", True)
    assert [m.kind for m in quick] == ["linear", "trend", "interaction", "iid"]


def test_pool_is_seeded_and_its_quick_form_is_a_prefix():
    sf = parse_sweep_file("configs/sweep.yaml")
    a, b = sample_pool(sf, 27, 0), sample_pool(sf, 9, 0)
    assert a[:9] == b and a != sample_pool(sf, 27, 1)
    assert set(a[0]) == set(sf.search)
    for params in a:  # every draw is a valid trial config
        trial_config(sf.base, params)


def test_variants_parse_lists_inside_brackets():
    assert _parse_variants("agent.gamma=0,agent.hidden=[16, 16]; agent.learning_rate=1e-3;") == [
        {"agent.gamma": 0, "agent.hidden": [16, 16]}, {"agent.learning_rate": 1e-3}]


@pytest.mark.parametrize(("ensemble", "select"), [(False, "last"), (True, "last"), (True, "best_val_sharpe")])
def test_a_scored_configuration_is_validated_as_the_sweep_trial_would_be(ensemble, select):
    from dqlray.config import load_config
    from dqlray.data import synth_market
    from dqlray.dqn import evaluation_policy
    from dqlray.evaluation import evaluate_policy
    from dqlray.trainer import train

    data = synth_market(700, seed=3, ar=0.2)
    base = load_config(overrides={"env": {"episode_length": 100}, "agent": {"learning_starts": 50, "buffer_size": 300},
                                  "train": {"episodes": 4, "num_seeds": 2, "ensemble": ensemble, "select": select}})
    scored = score_config({"agent.gamma": 0.5}, data, base, 2)
    trial = train(base.replace({"agent": {"gamma": 0.5}}), data, progress=False)  # what a sweep trial trains
    kept = trial.member.kept()[1] if select != "last" else trial.final
    assert scored["val_search"] == pytest.approx(kept["val_sharpe"], abs=1e-12)
    assert len(scored["test_fresh"]) == 2 and scored["search_steps"] == 2 * 400
    # a fresh run is the same configuration on unseen seeds, choosing its own checkpoint on its own validation
    per_run = 2 if ensemble else 1
    fresh = base.replace({"agent": {"gamma": 0.5}, "train": {"seed": 2 + per_run, "num_seeds": per_run}})
    alone = train(fresh, data, progress=False)
    policy, n = evaluation_policy(alone.kept_learner(), ensemble=ensemble)
    ev = evaluate_policy(policy, alone.market, part="test", n_envs=n, env=fresh.env, periods=fresh.train.periods_per_year)
    assert scored["test_fresh"][-1] == pytest.approx(ev.metrics[-1]["sharpe"], abs=1e-9)
    assert scored["selected_episode"][0] == (trial.member.kept()[3] if select != "last" else 4)


def test_regret_floor_is_zero_without_noise_and_grows_with_it():
    from bench.power import regret_floor

    true = np.linspace(-0.3, 0.3, 27)
    exact = regret_floor(true, np.full(27, 1e-9), true, sims=500)
    assert exact["clairvoyant"] == pytest.approx(0.0, abs=1e-6)  # a picker that knows the quality has no regret
    assert exact["by_validation"] == pytest.approx(0.0, abs=1e-6)  # validation = quality: no selection noise
    floors = [regret_floor(true, np.full(27, se), sims=2000)["clairvoyant"] for se in (0.02, 0.08, 0.15)]
    assert floors[0] < floors[1] < floors[2]  # the oracle is the luckiest measurement: more noise, more regret
    assert 0.2 < floors[2] < 1.0
    noisy_val = true + np.random.default_rng(1).normal(0, 0.5, 27)
    r = regret_floor(true, np.full(27, 0.05), noisy_val, sims=2000)
    assert r["by_validation"] > r["clairvoyant"] + 0.2  # ranking by a noisy validation loses to knowing
    assert math.isnan(regret_floor(np.zeros(27) + 0.1, np.full(27, 0.1))["clairvoyant"])  # nothing to find
    same = [regret_floor(true, np.full(27, 0.1), seed=3)["clairvoyant"] for _ in range(2)]
    assert same[0] == same[1]  # seeded
