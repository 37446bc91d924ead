"""The K seeds as one policy (``train.ensemble``, issue 12): averaged Q-values, on validation and on the test part."""

import json

import numpy as np
import pytest
import torch

from dqlray.config import load_config
from dqlray.data import synth_market
from dqlray.dqn import EnsemblePolicy, GreedyPolicy, evaluation_policy
from dqlray.errors import ConfigError
from dqlray.evaluation import evaluate_policy
from dqlray.parts import build_market, make_learner
from dqlray.trainer import train, validation_metrics
from dqlray.workflow import evaluate_all, format_metrics_table

DATA = synth_market(700, seed=3, ar=0.2)


def small(**over):
    base = {"env": {"episode_length": 100}, "agent": {"learning_starts": 50, "buffer_size": 300},
            "train": {"episodes": 3, "num_seeds": 3, "eval_every": 1}}
    for sec, vals in over.items():
        base.setdefault(sec, {}).update(vals)
    return load_config(overrides=base)


def full_q(learner, obs):
    """Every seed's full Q-values (the dueling head's V + A - mean A) on ``obs``, computed by torch."""
    with torch.inference_mode():
        return learner.net.forward(torch.as_tensor(obs, dtype=torch.float32)[:, None, :])[:, 0, :].numpy()


@pytest.mark.parametrize("agent_type", ["dqn", "double_dueling"])
def test_ensemble_acts_on_the_mean_q_value_of_its_seeds(agent_type):
    cfg = small(agent={"agent_type": agent_type, "hidden": [8]}, train={"num_seeds": 5})
    market = build_market(cfg, DATA)
    learner = make_learner(cfg, market)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, market.obs_dim)).astype(np.float32)
    pol = EnsemblePolicy(learner)
    got = np.array([pol.predict(o[None])[0] for o in obs])
    # by hand: every seed's full Q-values for the same observation, averaged over seeds, argmax
    want = np.array([full_q(learner, np.repeat(o[None], 5, axis=0)).mean(axis=0).argmax() for o in obs])
    assert (got == want).all()
    # the ensemble is not just one seed's policy: on these random networks the seeds disagree somewhere
    each = np.stack([GreedyPolicy(learner).predict(np.repeat(o[None], 5, axis=0)) for o in obs])
    assert (each != each[:, :1]).any()


def test_groups_are_separate_ensembles_and_one_seed_is_its_greedy_policy():
    cfg = small(train={"num_seeds": 4})
    market = build_market(cfg, DATA)
    learner = make_learner(cfg, market)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(2, market.obs_dim)).astype(np.float32)
    groups = [[0, 2], [1, 3]]
    got = EnsemblePolicy(learner, groups).predict(obs)
    q = full_q(learner, obs[[0, 1, 0, 1]])  # row k sees its group's observation
    assert got.tolist() == [int(q[[0, 2]].mean(0).argmax()), int(q[[1, 3]].mean(0).argmax())]
    singles = EnsemblePolicy(learner, [[0], [1], [2], [3]]).predict(np.repeat(obs[:1], 4, axis=0))
    assert (singles == GreedyPolicy(learner).predict(np.repeat(obs[:1], 4, axis=0))).all()
    for bad in ([[0, 1], [1, 2]], [[0], []], [[4]]):
        with pytest.raises(ValueError, match="EnsemblePolicy"):
            EnsemblePolicy(learner, bad)


def test_a_trained_run_is_validated_and_tested_as_its_ensemble():
    cfg = small(train={"ensemble": True})
    res = train(cfg, DATA, progress=False)
    direct = {part: evaluate_policy(EnsemblePolicy(res.learner), res.market, part=part, env=cfg.env, n_envs=1)
              for part in ("val", "test")}
    # the validation the run reported (and a sweep ranks by) is the ensemble's, one policy with no spread over seeds
    assert res.final["val_sharpe"] == pytest.approx(direct["val"].metrics[0]["sharpe"], abs=1e-12)
    assert res.final["val_sharpe_std"] == 0.0
    assert validation_metrics(res.learner, res.market, cfg)["val_sharpe"] == res.final["val_sharpe"]
    evaluation, curves = evaluate_all(res.learner, res.market, cfg, "test")
    assert evaluation["policy"] == "ensemble" and evaluation["seeds"] == [0, 1, 2]
    assert len(evaluation["agent"]["per_seed"]) == 1 and curves["agent"].returns.shape[0] == 1
    assert evaluation["agent"]["summary"]["sharpe"]["mean"] == pytest.approx(direct["test"].metrics[0]["sharpe"])
    table = format_metrics_table(json.loads(json.dumps(evaluation)))
    row = next(line for line in table.splitlines() if line.startswith("agent (ensemble)"))
    assert "±" not in row  # one policy: no spread over seeds
    # the same trained networks scored seed by seed: K rows, the per-seed policies
    per_seed, _ = evaluate_all(res.learner, res.market, cfg.replace({"train": {"ensemble": False}}), "test")
    assert per_seed["policy"] == "seeds" and len(per_seed["agent"]["per_seed"]) == 3


def test_evaluation_policy_and_config():
    cfg = small()
    learner = make_learner(cfg, build_market(cfg, DATA))
    pol, n = evaluation_policy(learner, ensemble=False)
    assert isinstance(pol, GreedyPolicy) and n == 3
    pol, n = evaluation_policy(learner, ensemble=True)
    assert isinstance(pol, EnsemblePolicy) and n == 1
    assert load_config().train.ensemble is False
    with pytest.raises(ConfigError, match="train.ensemble"):
        load_config(overrides={"train": {"ensemble": "yes"}})
