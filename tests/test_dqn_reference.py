"""The hand-written update of ``DQNLearner`` against PyTorch's own parts, on a single seed (issue 15).

``DQNLearner.update`` computes the TD targets, the Huber (or squared) loss, its gradient by a hand-written backward
pass, a per-seed gradient clip and an Adam step, all on flat ``(K, P)`` tensors. Here one seed's update is redone with
autograd, ``torch.nn.functional.smooth_l1_loss`` (or ``mse_loss``), ``torch.nn.utils.clip_grad_norm_`` and
``torch.optim.Adam``, and the parameters must agree after every step. Only the learner's public behaviour is used:
its constructor, ``update``, ``pop_stats``, and the network's ``flat`` parameters, ``views`` and ``forward``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dqlray.config import AgentConfig
from dqlray.data import synth_market
from dqlray.dqn import DQNLearner
from dqlray.market import Market
from dqlray.replay import Transitions

MARKET = Market.build(synth_market(600, seed=5, ar=0.2), window=4)
B = 32


def make_learner(seed: int = 3, **agent) -> DQNLearner:
    cfg = AgentConfig(**{"hidden": (16, 8), "batch_size": B, "buffer_size": 1000, "learning_rate": 3e-3,
                         "target_update_freq": 10_000, **agent})  # the target stays the initial network
    return DQNLearner(cfg, MARKET, 2, (seed,), [np.random.SeedSequence(seed).spawn(1)[0]], torch.device("cpu"))


def batch(rng: np.random.Generator, ret_scale: float = 1.0) -> Transitions:
    lo, hi = MARKET.part("train")
    t = rng.integers(lo, hi - 1, size=(1, B))
    return Transitions(
        t=t.astype(np.int32), pos=rng.integers(0, 2, size=(1, B)).astype(np.float32),
        action=rng.integers(0, 2, size=(1, B)).astype(np.int64),
        ret=(rng.normal(0, 1, size=(1, B)) * ret_scale).astype(np.float32),
        next_t=(t + 1).astype(np.int32), next_pos=rng.integers(0, 2, size=(1, B)).astype(np.float32),
        discount=np.where(rng.random((1, B)) < 0.1, 0.0, 0.95).astype(np.float32),
    )


def reference_loss(learner: DQNLearner, flat: torch.Tensor, target: torch.Tensor, b: Transitions) -> torch.Tensor:
    """The seed's loss as an autograd graph of ``flat``: Q(s, a) against r + discount * Q_target(s', a*)."""
    net = learner.net
    obs = torch.from_numpy(MARKET.observe(b.t[0].astype(np.int64), b.pos[0]))[None]
    nxt = torch.from_numpy(MARKET.observe(b.next_t[0].astype(np.int64), b.next_pos[0]))[None]
    q = net.forward(obs, *net.views(flat))[0].gather(-1, torch.from_numpy(b.action[0])[:, None]).squeeze(-1)
    with torch.no_grad():
        q_next_target = net.forward(nxt, *net.views(target))[0]
        if learner.cfg.double:  # Double DQN: the online network picks the action, the target values it
            a_star = net.forward(nxt, *net.views(flat.detach()))[0].argmax(-1, keepdim=True)
            q_next = q_next_target.gather(-1, a_star).squeeze(-1)
        else:
            q_next = q_next_target.max(-1).values
        y = torch.from_numpy(b.ret[0]) + torch.from_numpy(b.discount[0]) * q_next
    if learner.cfg.loss == "huber":
        return F.smooth_l1_loss(q, y)  # beta = 1, mean over the batch
    return F.mse_loss(q, y)


@pytest.mark.parametrize("loss", ["huber", "mse"])
def test_reported_loss_is_torchs(loss):
    learner = make_learner(loss=loss)
    b = batch(np.random.default_rng(0), ret_scale=3.0)  # TD errors on both sides of Huber's kink at |d| = 1
    flat0 = learner.net.flat.clone()
    expected = reference_loss(learner, flat0, flat0, b).item()
    learner.update(b)
    stats = learner.pop_stats()
    assert stats.loss.shape == (1,)
    assert stats.loss[0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("agent_type", ["dqn", "double_dueling"])
@pytest.mark.parametrize("loss", ["huber", "mse"])
@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_update_equals_autograd_clip_grad_norm_and_torch_adam(agent_type, loss, max_grad_norm):
    learner = make_learner(agent_type=agent_type, loss=loss, max_grad_norm=max_grad_norm)
    target = learner.net.flat.clone()
    flat = learner.net.flat.clone().requires_grad_(True)
    opt = torch.optim.Adam([flat], lr=learner.cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    rng = np.random.default_rng(1)
    clipped = 0
    for _ in range(6):  # several steps: Adam's moments and bias correction accumulate
        b = batch(rng, ret_scale=3.0)
        opt.zero_grad()
        reference_loss(learner, flat, target, b).backward()
        if max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_([flat], max_grad_norm)
            clipped += int(norm > max_grad_norm)
        opt.step()
        learner.update(b)
        assert torch.allclose(learner.net.flat, flat.detach(), rtol=1e-4, atol=1e-6), \
            (learner.net.flat - flat.detach()).abs().max()
    assert not torch.equal(learner.net.flat, target)  # it learned something
    if max_grad_norm is not None:
        assert clipped == 6  # the clip was active at every step, so it is what is compared


def test_clipping_is_per_seed():
    # Two seeds in one learner: each seed's gradient is clipped to its own norm, as two one-seed learners would be.
    cfg = dict(max_grad_norm=0.05, loss="huber")
    pair = DQNLearner(make_learner(**cfg).cfg, MARKET, 2, (3, 4),
                      [np.random.SeedSequence(s).spawn(1)[0] for s in (3, 4)], torch.device("cpu"))
    alone = [make_learner(seed=s, **cfg) for s in (3, 4)]
    rng = np.random.default_rng(2)
    for _ in range(3):
        b1, b2 = batch(rng, 3.0), batch(rng, 30.0)  # very different gradient norms
        pair.update(Transitions(*(np.concatenate([x, y]) for x, y in zip(b1, b2, strict=True))))
        alone[0].update(b1)
        alone[1].update(b2)
    for k in range(2):
        assert torch.allclose(pair.net.flat[k], alone[k].net.flat[0], rtol=1e-4, atol=1e-6)
