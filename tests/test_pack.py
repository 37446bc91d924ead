"""Packed trials (issue 14): a configuration trained inside a pack equals the same configuration trained alone."""

import itertools
import pickle

import numpy as np
import pytest
import torch

from dqlray.config import load_config
from dqlray.data import synth_market
from dqlray.dqn import DQNLearner
from dqlray.errors import ConfigError
from dqlray.pack import PackRun, compute_cost, group_configs, pack_conflict, pack_problem, train_pack
from dqlray.replay import BYTES_PER_TRANSITION, ReplayBuffer
from dqlray.trainer import train
from dqlray.tuning.space import parse_sweep_file, trial_config

DATA = synth_market(700, seed=3, ar=0.2)
TIMING = ("steps_per_s", "time_total_s")


def small(**over):
    base = {"env": {"episode_length": 100},
            "agent": {"learning_starts": 50, "buffer_size": 300, "hidden": [32, 32], "target_update_freq": 10},
            "train": {"episodes": 3, "num_seeds": 2, "eval_every": 1}}
    for sec, vals in over.items():
        base.setdefault(sec, {}).update(vals)
    return load_config(overrides=base)


# One pack that mixes every per-member value: a dueling Double-DQN member among plain ones, narrower hidden layers
# and a smaller batch (padded), n-step lengths 1/2/3, discounts, learning rates, Polyak tau, target periods, clip
# norms (one none), weight decay, reward scale, loss, exploration schedule, seeds and budgets.
CONFIGS = [
    small(),
    small(agent={"agent_type": "double_dueling", "n_step": 3, "gamma": 0.8}, train={"seed": 3}),
    small(agent={"hidden": [16, 24], "batch_size": 32, "learning_rate": 1e-3, "tau": 0.2, "target_update_freq": 3}),
    small(agent={"loss": "mse", "max_grad_norm": None, "weight_decay": 0.01, "reward_scale": 50.0, "eps_start": 0.5,
                 "eps_end": 0.1, "eps_decay_fraction": 0.5, "n_step": 2}),
    small(agent={"max_grad_norm": 0.5, "gamma": 0.0, "target_update_freq": 7}, train={"seed": 11, "episodes": 2}),
]
STOPPED = 1  # stopped after its first episode, as an early-stopping rule would


def strip(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.fixture(scope="module")
def packed():
    return train_pack(CONFIGS, DATA, should_stop=lambda ci, m: ci == STOPPED and m["episodes"] == 1)


@pytest.mark.parametrize("ci", range(len(CONFIGS)))
def test_member_of_a_pack_equals_its_run_alone(packed, ci):
    alone = train(CONFIGS[ci], DATA, progress=False, should_stop=(lambda: True) if ci == STOPPED else None)
    got = packed[ci]
    assert got.stopped_early == (ci == STOPPED)
    ln = alone.learner
    # A member as wide and with as large a batch as its pack runs the same kernels on the same shapes as alone: the
    # same bits. A padded one multiplies wider (zero-padded) matrices: the same up to float rounding.
    widest = tuple(max(c.agent.hidden[i] for c in CONFIGS) for i in range(2))
    same_shape = (CONFIGS[ci].agent.hidden == widest
                  and CONFIGS[ci].agent.batch_size == max(c.agent.batch_size for c in CONFIGS))
    for key, want in (("online", ln.net.flat), ("target", ln.target_flat), ("exp_avg", ln.exp_avg),
                      ("exp_avg_sq", ln.exp_avg_sq)):
        assert got.state[key].shape == want.shape, key  # laid out as alone: its own widths, no padding
        if same_shape:
            assert torch.equal(got.state[key], want), key
        else:
            assert torch.allclose(got.state[key], want, rtol=1e-4, atol=1e-6), key
    assert got.state["updates"] == ln.updates
    mine, theirs = strip(got.history), strip(alone.history)
    assert [list(r) for r in mine] == [list(r) for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6, nan_ok=True)


def test_pack_equals_alone_with_ruin_and_short_positions():
    env = {"episode_length": 100, "ruin_fraction": 0.995, "positions": "long_short"}  # ruin ends most episodes
    cfgs = [small(env=env, agent={"batch_size": 16, "gamma": 0.7}),
            small(env=env, agent={"n_step": 3, "gamma": 0.9, "hidden": [8, 16]}),
            small(env=env, agent={"n_step": 2, "gamma": 0.5, "loss": "mse"})]
    packed = train_pack(cfgs, DATA)
    for cfg, got in zip(cfgs, packed, strict=True):
        alone = train(cfg, DATA, progress=False)
        assert alone.final["episodes_completed"] > 10
        assert torch.allclose(got.state["online"], alone.learner.net.flat, rtol=1e-4, atol=1e-6)
        assert got.history[-1]["episodes_completed"] == alone.final["episodes_completed"]


def test_checkpoints_of_the_unaligned_layout_still_load():
    cfg = CONFIGS[1].agent  # dueling: four blocks
    market = PackRun([CONFIGS[1]], DATA).market
    a = DQNLearner(cfg, market, 2, (1, 2), [1, 2], torch.device("cpu"))
    state = a.state_dict()
    ws, bs = a.net.views(state["online"])
    state["online"] = torch.cat([t for w, b in zip(ws, bs, strict=True) for t in (w.flatten(1), b.flatten(1))], 1)
    assert state["online"].shape[1] == a.net.unaligned_size < a.net.n_params
    b = DQNLearner(cfg, market, 2, (7, 8), [7, 8], torch.device("cpu"))
    b.load_state_dict(state)
    assert torch.equal(a.net.flat, b.net.flat)


def test_member_state_loads_into_a_learner_of_its_own():
    cfg = CONFIGS[2]
    run = PackRun(CONFIGS[:3], DATA)
    run.run_episode()
    market = run.market
    rows = run.rows_of(2)
    obs = market.observe(np.arange(200, 264), np.zeros(64))
    for take, seeds in ((rows, cfg.train.seeds), (rows[1:], cfg.train.seeds[1:])):  # the configuration; one member
        own = DQNLearner(cfg.agent, market, 2, seeds, [np.random.SeedSequence(s).spawn(3)[2] for s in seeds],
                         torch.device("cpu"))
        own.load_state_dict(run.learner.member_state(take))
        for r, row in enumerate(take):
            q_pack = run.learner.net.forward(torch.from_numpy(obs)[None].expand(run.learner.k, -1, -1))[row]
            q_own = own.net.forward(torch.from_numpy(obs)[None].expand(own.k, -1, -1))[r]
            assert torch.allclose(q_pack, q_own, atol=1e-6)
    with pytest.raises(Exception, match="hidden"):  # another configuration's members do not load
        own.load_state_dict(run.learner.member_state(run.rows_of(0)[:1]))


def test_padding_stays_zero_and_stopping_shrinks_the_pack():
    run = PackRun([CONFIGS[0], CONFIGS[1], CONFIGS[2]], DATA)
    run.run_episode()
    ln = run.learner
    ws, bs = ln.net.weights, ln.net.biases
    narrow = run.rows_of(2)
    assert ln.net.hidden == (32, 32) and ln.updates > 0
    assert (ws[0][narrow, :, 16:] == 0).all() and (bs[0][narrow, :, 16:] == 0).all()  # units the member lacks
    assert (ws[1][narrow, 16:] == 0).all() and (ws[1][narrow, :, 24:] == 0).all()
    assert (ws[-2][run.rows_of(0)] == 0).all() and (bs[-2][run.rows_of(0)] == 0).all()  # no value branch
    assert (ln.exp_avg_sq.abs().sum(1) > 0).all()
    run.stop([0, 1])
    assert ln.k == 2 and ln.net.hidden == (16, 24) and not ln.net.dueling  # narrower, and a plain head again
    assert run.buffer.k == 2 and run.venv.n_envs == 2 and run.active == [2]
    assert ln.net.flat.shape == ln.grad.shape == ln.target_flat.shape == (2, ln.net.n_params)


def test_pack_resume_equals_uninterrupted(tmp_path):
    cfgs = [CONFIGS[0], CONFIGS[2], CONFIGS[3]]
    full = PackRun(cfgs, DATA)
    part = PackRun(cfgs, DATA)
    for run in (full, part):
        run.run_episode()
        run.stop([1])
    torch.save(part.state_dict(), tmp_path / "pack.pt")
    resumed = PackRun(cfgs, DATA)
    resumed.load_state_dict(torch.load(tmp_path / "pack.pt", weights_only=False))
    while full.active:
        full.run_episode()
        resumed.run_episode()
    for a, b in zip(full.results, resumed.results, strict=True):
        assert torch.equal(a.state["online"], b.state["online"]) and torch.equal(a.state["target"], b.state["target"])
        assert strip(a.history) == strip(b.history)  # same seed, same result
    # the clock goes on from the checkpoint's time_total_s rather than restarting at 0
    state = part.state_dict()
    assert 0 < state["elapsed_s"] < 1000
    later = PackRun(cfgs, DATA)
    later.load_state_dict({**state, "elapsed_s": 1000.0})
    later.run_episode()
    assert later.results[0].history[-1]["time_total_s"] > 1000


def test_a_checkpoint_taken_after_every_configuration_left_restores_their_results():
    # the last to leave is configuration 0 (1 and 2 stop first), not the pack's last index, and it has more seeds
    cfgs = [CONFIGS[0].replace({"train": {"num_seeds": 3}}), CONFIGS[2], CONFIGS[3]]
    run = PackRun(cfgs, DATA)
    run.run_episode()
    run.stop([1, 2])
    run.run_episode()
    run.stop([0])
    assert run.active == []
    resumed = PackRun(cfgs, DATA)
    resumed.load_state_dict(run.state_dict())
    assert resumed.active == [] and resumed.episode == run.episode
    for a, b in zip(run.results, resumed.results, strict=True):
        assert a.status == b.status and strip(a.history) == strip(b.history)
        assert torch.equal(a.state["online"], b.state["online"])
    # the learner holds the rows of the configuration that left last, as it did when the checkpoint was taken
    assert resumed.rows_held_by == run.rows_held_by == 0
    assert torch.equal(resumed.learner.state_dict()["online"], run.learner.state_dict()["online"])


def test_a_finished_single_run_resumes_with_its_trained_networks():
    # a single run's final checkpoint is taken after its one configuration left (finished): a resumed run is
    # evaluated with that learner, so it must hold the trained networks, not fresh ones
    run = PackRun([CONFIGS[0]], DATA)
    while run.active:
        run.run_episode()
    resumed = PackRun([CONFIGS[0]], DATA)
    resumed.load_state_dict(run.state_dict())
    assert resumed.active == []
    for key in ("online", "target", "exp_avg", "exp_avg_sq"):
        assert torch.equal(resumed.learner.state_dict()[key], run.learner.state_dict()[key]), key


def test_a_sweep_checkpoint_drops_the_networks_of_configurations_that_left(tmp_path):
    # a sweep writes a departed configuration's networks to its own record; the pack's checkpoints keep only its
    # metrics (what the result rows and the search are told after a restore), and the others resume exactly
    cfgs = [c.replace({"train": {"select": "best_val_sharpe"}}) for c in (CONFIGS[0], CONFIGS[2], CONFIGS[3])]
    full, part = PackRun(cfgs, DATA), PackRun(cfgs, DATA)
    for run in (full, part):
        run.run_episode()
        run.stop([1])
    slim, fat = part.state_dict(departed_arrays=False), part.state_dict()
    gone = slim["results"][1]
    assert gone["state"] is None and gone["val_returns"] is None and "state" not in gone["selected"]
    assert fat["results"][1]["state"] is not None  # the default keeps everything (PackRun's own users)
    assert slim["results"][0]["state"] is None and slim["results"][0]["selected"]["state"] is not None  # active: kept
    torch.save(slim, tmp_path / "pack.pt")
    assert (tmp_path / "pack.pt").stat().st_size < len(pickle.dumps(fat))
    resumed = PackRun(cfgs, DATA)
    resumed.load_state_dict(torch.load(tmp_path / "pack.pt", weights_only=False))
    assert resumed.results[1].kept()[1] == full.results[1].kept()[1]  # its ranked value survives the restore
    while full.active:
        full.run_episode()
        resumed.run_episode()
    for ci in (0, 2):
        a, b = full.results[ci], resumed.results[ci]
        assert torch.equal(a.state["online"], b.state["online"]) and strip(a.history) == strip(b.history)


def test_configs_that_cannot_share_a_pack():
    base = small()
    assert pack_conflict(base, CONFIGS[4]) is None
    assert pack_conflict(base, small(agent={"buffer_size": 500})) == \
        "agent.buffer_size differs (300 vs 500): the replay capacity is per pack"
    assert pack_conflict(base, small(agent={"hidden": [64]})) == \
        "agent.hidden differs (depth 2 [32, 32] vs depth 1 [64]): members share the network's depth (widths may differ)"
    assert pack_conflict(base, small(env={"fee_bps": 2.0})) == \
        "env.fee_bps differs (1.0 vs 2.0): members share one vectorised environment"
    assert pack_conflict(base, small(data={"window": 4})).startswith("data.window differs (8 vs 4): members share")
    assert pack_problem(CONFIGS) is None
    with pytest.raises(ConfigError, match=r"^pack: configuration 1 cannot join configuration 0: agent\.train_freq "
                                          r"differs \(4 vs 2\): the pack updates all members at once$"):
        PackRun([base, small(agent={"train_freq": 2})], DATA)
    cfgs = [base, small(agent={"buffer_size": 500}), small(agent={"hidden": [8, 8]}), small(agent={"gamma": 0.5}),
            small(agent={"buffer_size": 500, "hidden": [16, 16]})]
    assert group_configs(cfgs) == [[0, 2, 3], [1, 4]]
    # cut by shape: the two 32-wide ones share a pack rather than padding the 8-wide one; cheaper first in a group
    assert group_configs(cfgs, max_configs=2) == [[2], [0, 3], [4, 1]]
    # where padding costs less than a pack's own overhead, small networks share one pack; a wide one, with a large
    # batch, pays more for padding everyone than one more pack costs
    tiny = [small(agent={"hidden": [h, h], "batch_size": b}) for h, b in ((8, 32), (16, 32), (16, 64), (32, 32))]
    assert group_configs(tiny, max_configs=8) == [[0, 1, 2, 3]]
    wide = [*tiny, small(agent={"hidden": [256, 256], "batch_size": 256})]
    assert group_configs(wide, max_configs=8) == [[0, 1, 2, 3], [4]]
    assert compute_cost(wide[:2]) == compute_cost(wide[1]) < compute_cost(wide[4])


def test_the_default_sweep_grid_is_one_pack():
    sweep = parse_sweep_file("configs/sweep.yaml")
    keys = list(sweep.grid)
    cfgs = [trial_config(sweep.base, dict(zip(keys, p, strict=True)))
            for p in itertools.product(*(sweep.grid[k] for k in keys))]
    assert len(cfgs) == 27 and group_configs(cfgs) == [list(range(27))]
    assert [len(p) for p in group_configs(cfgs, max_configs=8)] == [7, 7, 7, 6]  # as few as fit, even sizes


def _random_steps(n, k, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
        done = rng.random(k) < 0.15
        term = done & (rng.random(k) < 0.5)
        yield (np.full(k, 100 + i), rng.integers(-1, 2, k).astype(float), rng.integers(0, 3, k), rng.normal(0, 0.01, k),
               term, done & ~term)


def test_replay_members_sample_as_alone():
    n, gamma, scale, sizes = [1, 3, 2], [0.9, 0.5, 0.7], [1.0, 100.0, 3.0], [8, 16, 4]
    pv = [-1.0, 0.0, 1.0]
    pack = ReplayBuffer(3, 40, [5, 6, 7], gamma=gamma, n_step=n, reward_scale=scale, pos_values=pv)
    alone = [ReplayBuffer(1, 40, [5 + i], gamma=gamma[i], n_step=n[i], reward_scale=scale[i], pos_values=pv)
             for i in range(3)]
    assert pack.nbytes == 3 * (40 + 2 + 2) * BYTES_PER_TRANSITION and BYTES_PER_TRANSITION == 16
    for step in _random_steps(100, 3, 0):  # 100 steps: the ring of 40 wraps
        pack.add(*step)
        for i, a in enumerate(alone):
            a.add(*(x[i:i + 1] for x in step))
        if pack.steps >= 3:
            got = pack.sample(sizes)
            assert got.t.shape == (3, 16)
            for i, a in enumerate(alone):
                want = a.sample(sizes[i])
                for f, g, w in zip(got._fields, got, want, strict=True):
                    assert np.array_equal(g[i, :sizes[i]], w[0]), (f, i)
    clone = ReplayBuffer(3, 40, [0, 0, 0], gamma=gamma, n_step=n, reward_scale=scale, pos_values=pv)
    clone.load_state_dict(pack.state_dict())  # a checkpoint continues exactly
    for a, b in zip(clone.sample(sizes), pack.sample(sizes), strict=True):
        assert np.array_equal(a, b)
    for i, a in enumerate(alone):  # keep the buffers alone in step with the pack's extra batch
        a.sample(sizes[i])
    pack.remove_members([1])
    got = pack.sample([8, 4])
    for j, i in enumerate((0, 2)):
        assert np.array_equal(got.ret[j, :sizes[i]], alone[i].sample(sizes[i]).ret[0])
    # the one member left asks for its own size: its pending draws are still the ones it would make alone
    pack.remove_members([0])
    for _ in range(3):
        assert np.array_equal(pack.sample(sizes[2]).t[0], alone[2].sample(sizes[2]).t[0])


def test_truncation_bootstraps_with_a_shorter_horizon():
    buf = ReplayBuffer(1, 10, [0], gamma=0.5, n_step=3, pos_values=[0.0, 1.0])
    z, f = np.zeros(1), np.zeros(1, bool)
    for i, (r, trunc) in enumerate([(1.0, False), (2.0, True), (4.0, False)]):
        buf.add(np.array([10 + i]), z, np.ones(1, int), np.array([r]), f, np.array([trunc]))
    b = buf.sample(2000)
    got = {int(t): (float(r), int(nt), float(d), float(p)) for t, r, nt, d, p in
           zip(b.t[0], b.ret[0], b.next_t[0], b.discount[0], b.next_pos[0], strict=True)}
    # the end of the data truncates: bootstrap from the next bar with gamma^h; step 12 waits for 2 more rewards
    assert got == {10: (1 + 0.5 * 2, 12, 0.25, 1.0), 11: (2.0, 12, 0.5, 1.0)}


def test_a_diverging_member_leaves_alone_and_the_others_go_on():
    boom = small(agent={"learning_rate": 1e30})
    fine = CONFIGS[2]
    run = PackRun([boom, fine], DATA)
    while run.active:
        run.run_episode()
    bad, good = run.results
    assert bad.status == "diverged" and len(bad.history) < boom.train.episodes
    assert not np.isfinite(bad.history[-1]["loss"])
    assert good.status == "finished" and len(good.history) == fine.train.episodes
    alone = train(fine, DATA, progress=False)
    assert torch.allclose(good.state["online"], alone.learner.net.flat, rtol=1e-4, atol=1e-6)
    with pytest.raises(Exception, match=r"diverged at episode \d+: .*agent\.learning_rate=1e\+30"):
        train(boom, DATA, progress=False)  # a run alone stops with one line, as before


def test_select_keeps_the_parameters_of_the_best_validation_evaluation(tmp_path):
    cfg = small(train={"episodes": 4, "select": "best_val_sharpe"})
    res = train(cfg, DATA, progress=False, checkpoint_dir=tmp_path / "ck")
    evals = res.member.evaluations
    assert [e["episodes"] for e in evals] == [1, 2, 3, 4]
    best = max(evals, key=lambda e: e["val_sharpe"])
    assert res.member.selected["episodes"] == best["episodes"]
    kept = res.kept_learner()
    from dqlray.trainer import validation_metrics
    assert validation_metrics(kept, res.market, cfg)["val_sharpe"] == pytest.approx(best["val_sharpe"])
    assert res.member.val_returns.shape == (res.market.part("val")[1] - res.market.part("val")[0] - 1, 2)
    # the same parameters come back from the checkpoint, for a later evaluation
    from dqlray.workflow import learner_from_checkpoint
    again = learner_from_checkpoint(cfg, res.market, tmp_path / "ck")
    assert torch.equal(again.net.flat, kept.net.flat)
    if best["episodes"] != 4:
        assert not torch.equal(kept.net.flat, res.learner.net.flat)


def test_ensemble_members_of_a_pack_are_validated_as_their_runs_alone():
    # train.ensemble is a group key: each configuration of the pack is scored as the ensemble of its own seeds
    configs = [small(train={"ensemble": True}),
               small(agent={"learning_rate": 1e-3, "hidden": [16, 24]}, train={"ensemble": True, "seed": 5,
                                                                                 "num_seeds": 3})]
    packed = train_pack(configs, DATA)
    for cfg, got in zip(configs, packed, strict=True):
        alone = train(cfg, DATA, progress=False)
        assert [e["val_sharpe_std"] for e in got.evaluations] == [0.0] * 3
        assert [e["val_sharpe"] for e in got.evaluations] == pytest.approx(
            [r["val_sharpe"] for r in alone.history], rel=1e-4, abs=1e-6)
        assert got.val_returns.shape[1] == 1  # one policy: one column of validation returns
    assert pack_conflict(configs[0], small()) == "train.ensemble differs (True vs False): a setting of the pack's whole run"
