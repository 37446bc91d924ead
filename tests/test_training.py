"""The DQN agent and the single training run: determinism, lockstep == separate, resume == uninterrupted."""

import numpy as np
import pytest
import torch

from dqlray.config import load_config
from dqlray.data import synth_market
from dqlray.errors import ConfigError
from dqlray.market import Market
from dqlray.networks import BatchedMLP
from dqlray.replay import BYTES_PER_TRANSITION, ReplayBuffer
from dqlray.trainer import list_checkpoints, train

DATA = synth_market(700, seed=3, ar=0.2)


def small(**over):
    base = {"env": {"episode_length": 100}, "agent": {"learning_starts": 50, "buffer_size": 300},
            "train": {"episodes": 3, "num_seeds": 2, "eval_every": 1}}
    for sec, vals in over.items():
        base.setdefault(sec, {}).update(vals)
    return load_config(overrides=base)


def test_smoke_200_steps():
    cfg = small(train={"episodes": 2, "num_seeds": 1})
    res = train(cfg, DATA, progress=False)
    assert res.final["env_steps"] == 200 and res.final["episodes"] == 2
    assert res.learner.updates == (200 - 50) // 4 + 1
    assert np.isfinite(res.final["loss"]) and np.isfinite(res.final["val_sharpe"])


@pytest.mark.parametrize("agent_type", ["dqn", "custom"])
def test_same_seed_same_result(agent_type):
    cfg = small(agent={"agent_type": agent_type, "n_step": 3 if agent_type == "custom" else 1})
    a, b = train(cfg, DATA, progress=False), train(cfg, DATA, progress=False)
    assert torch.equal(a.learner.net.flat, b.learner.net.flat)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("steps_per_s", "time_total_s")} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    c = train(small(agent={"agent_type": agent_type}, train={"seed": 9}), DATA, progress=False)
    assert not torch.equal(a.learner.net.flat, c.learner.net.flat)


@pytest.mark.parametrize("agent_type", ["dqn", "double_dueling"])
def test_lockstep_equals_separate_runs(agent_type):
    together = train(small(agent={"agent_type": agent_type}, train={"seed": 5, "num_seeds": 3}), DATA, progress=False)
    for k, seed in enumerate((5, 6, 7)):
        alone = train(small(agent={"agent_type": agent_type}, train={"seed": seed, "num_seeds": 1}), DATA,
                      progress=False)
        assert torch.allclose(together.learner.net.flat[k], alone.learner.net.flat[0], rtol=1e-4, atol=1e-6)


def test_resume_equals_uninterrupted(tmp_path):
    cfg = small(train={"episodes": 4, "checkpoint_every": 2}, agent={"n_step": 2})
    full = train(cfg, DATA, progress=False)
    calls = []
    part = train(cfg, DATA, checkpoint_dir=tmp_path, progress=False,
                 should_stop=lambda: True, report=lambda m, p: calls.append(p))
    assert part.stopped_early and part.final["episodes"] == 1 and calls[0] is not None
    resumed = train(cfg, DATA, checkpoint_dir=tmp_path, resume_from=tmp_path, progress=False)
    assert torch.equal(full.learner.net.flat, resumed.learner.net.flat)
    assert [h["val_sharpe"] for h in full.history] == [h["val_sharpe"] for h in resumed.history]
    assert [c.name for c in list_checkpoints(tmp_path)] == ["ckpt_000001", "ckpt_000002", "ckpt_000004"]


def test_checkpoint_rotation(tmp_path):
    train(small(train={"episodes": 5, "checkpoint_every": 1, "keep_checkpoints": 2}), DATA, checkpoint_dir=tmp_path,
          progress=False)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["ckpt_000004", "ckpt_000005"]
    assert not list(tmp_path.glob(".tmp*"))


def test_buffer_wraps_around():
    buf = ReplayBuffer(2, 5, [0, 1], gamma=0.9, pos_values=[0.0, 1.0])
    no = np.zeros(2, bool)
    for i in range(12):
        buf.add(np.array([i, 100 + i]), np.zeros(2), np.ones(2, int), np.full(2, float(i)), no, no)
    assert buf.size.tolist() == [5, 5] and buf.nbytes == 2 * 5 * BYTES_PER_TRANSITION
    assert sorted(buf.arrays["t"][0].tolist()) == [7, 8, 9, 10, 11]
    batch = buf.sample(64)
    assert set(batch.t[0].tolist()) <= {7, 8, 9, 10, 11} and set(batch.t[1].tolist()) <= {107, 108, 109, 110, 111}
    assert np.array_equal(batch.ret[0], batch.t[0].astype(np.float32))
    assert np.array_equal(batch.next_t, batch.t + 1) and (batch.next_pos == 1.0).all()
    assert np.allclose(batch.discount, 0.9)


def sampleable(buf, row=0, draws=4000):
    """Every transition member ``row`` can sample: {t: (ret, next_t, discount)}."""
    b = buf.sample(draws)
    return {int(t): (float(r), int(nt), float(d)) for t, r, nt, d in
            zip(b.t[row], b.ret[row], b.next_t[row], b.discount[row], strict=True)}


def test_n_step_returns():
    buf = ReplayBuffer(1, 10, [0], gamma=0.5, n_step=3, pos_values=[0.0, 1.0])
    z = np.zeros(1)
    for i, (r, term, trunc) in enumerate([(1.0, False, False), (2.0, False, False), (4.0, False, False),
                                          (8.0, True, False)]):
        buf.add(np.array([10 + i]), z, np.zeros(1, int), np.array([r]), np.array([term]), np.array([trunc]))
        if i == 2:  # steps 11 and 12 still wait for later rewards: only step 10 can be sampled
            assert buf.size[0] == 1 and set(sampleable(buf)) == {10}
    assert buf.size[0] == 4
    got = sampleable(buf)
    assert [got[t][0] for t in range(10, 14)] == [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4 + 0.25 * 8, 4 + 0.5 * 8, 8]
    assert [got[t][1] for t in range(10, 14)] == [13, 14, 14, 14]
    assert [got[t][2] for t in range(10, 14)] == [0.125, 0.0, 0.0, 0.0]  # terminated: no bootstrap after ruin


def test_target_sync_schedule():
    cfg = small(agent={"target_update_freq": 5}, train={"episodes": 1, "num_seeds": 1})
    res = train(cfg, DATA, progress=False)
    ln = res.learner
    assert ln.updates % 5 != 0  # the last updates since the sync have moved the online net away
    assert not torch.equal(ln.net.flat, ln.target_flat)
    ln.sync_target()
    assert torch.equal(ln.net.flat, ln.target_flat)


@pytest.mark.parametrize("dueling", [False, True])
def test_manual_backward_matches_autograd(dueling):
    net = BatchedMLP(7, 3, (5, 4), (1, 2), dueling=dueling)
    x = torch.randn(2, 6, 7)
    dq = torch.randn(2, 6, 3)
    grad = torch.zeros_like(net.flat)
    q, cache = net.forward_cached(x)
    net.backward(cache, dq, net.views(grad))
    flat = net.flat.clone().requires_grad_(True)
    w, b = net.views(flat)
    (net.forward(x, w, b) * dq).sum().backward()
    assert torch.allclose(grad, flat.grad, atol=1e-6)


def test_member_init_depends_on_its_seed_only():
    a = BatchedMLP(4, 2, (8,), (3, 4, 5))
    b = BatchedMLP(4, 2, (8,), (4,))
    assert torch.equal(a.flat[1], b.flat[0])


@pytest.mark.parametrize("over, message", [
    ({"agent": {"agent_type": "ppo"}}, r"agent\.agent_type='ppo' is not allowed: one of dqn, dql, double_dueling"),
    ({"agent": {"gamma": 1.5}}, r"agent\.gamma=1\.5 is not allowed: a number in \[0, 1\]"),
    ({"agent": {"learning_rat": 1}}, r"unknown key agent\.learning_rat; allowed: agent_type, hidden"),
    ({"agents": {}}, r"unknown section 'agents'"),
    ({"train": {"episodes": "ten"}}, r"train\.episodes: 'ten' is not a int"),
    ({"agent": {"batch_size": 500, "buffer_size": 100}}, r"agent\.batch_size=500 is not allowed: <= buffer_size"),
    ({"env": {"positions": "short_only"}}, r"env\.positions='short_only' is not allowed: long_flat or long_short"),
])
def test_config_errors(over, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=over)


def test_config_file_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("agent:\n  gamma: 0.9\n  nstep: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key agent\.nstep"):
        load_config(p)
    p.write_text("agent: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+ is not valid YAML"):
        load_config(p)
    p.write_text("agent:\n  agent_type: custom\n")
    cfg = load_config(p, {"agent": {"gamma": 0.9}})
    assert cfg.agent.agent_type == "double_dueling" and cfg.agent.gamma == 0.9 and cfg.agent.double


def test_market_window_shapes():
    m = Market.build(DATA, window=4)
    assert m.obs_dim == 4 * 8 + 1
