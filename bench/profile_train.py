"""Where dqlray's training time goes: an instrumented copy of the trainer's inner loop (issue 7).

    python -m bench.profile_train [--k 1,8] [--steps 10000]

The loop below is ``dqlray.trainer.train``'s episode loop with a timer around each part (it imports dqlray's
classes and changes nothing in them; keep it in step with the trainer). Sections:

- ``act``: epsilon schedule and ``DQNLearner.act`` (greedy forward + per-seed exploration draws);
- ``env``: ``VecTradingEnv.step``;
- ``insert``: ``ReplayBuffer.add`` (plus the loop's copies of ``t`` and ``pos``);
- ``sample``: ``ReplayBuffer.sample`` (index draws, record gathers, n-step returns);
- ``gather``: ``Market.observe`` inside ``DQNLearner.update`` (observations for the sampled bars);
- ``update``: the rest of ``DQNLearner.update`` (forward, manual backward, clipping, Adam, target sync, stats);
- ``other``: the loop's own bookkeeping.

The floor is ``DQNLearner.update`` on one fixed, already gathered batch (observation gather stubbed out), repeated:
the cost of the update math alone. "env + sampling" is ``env + sample + gather``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

SECTIONS = ("act", "env", "insert", "sample", "gather", "update", "other")


class _TimedMarket:
    """Delegates to a Market, timing ``observe`` (the learner's observation gather)."""

    def __init__(self, market: Any) -> None:
        self._m = market
        self.ns = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def observe(self, t, pos, out=None):
        t0 = time.perf_counter_ns()
        r = self._m.observe(t, pos, out=out)
        self.ns += time.perf_counter_ns() - t0
        return r


class _StubMarket(_TimedMarket):
    """``observe`` does nothing: the batch's observations are already in the learner's buffer."""

    def observe(self, t, pos, out=None):
        return out


def profile(k: int, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run the instrumented loop for K seeds and ``steps`` env steps per seed; return per-section times."""
    import torch

    from bench.throughput import bench_config
    from dqlray.parts import build_parts
    from dqlray.trainer import _epsilon

    cfg, _, market, total_steps = bench_config(k, 0, steps, args)
    torch.set_num_threads(cfg.train.torch_threads)
    ac = cfg.agent
    parts = build_parts(cfg, market)
    venv, learner, buffer = parts.env, parts.learner, parts.buffer
    timed = _TimedMarket(market)
    learner.market = timed
    ns = dict.fromkeys(SECTIONS, 0)
    pc = time.perf_counter_ns
    obs = venv.reset()
    n_updates = 0
    c0 = time.process_time()
    t_start = pc()
    for env_steps in range(1, total_steps + 1):
        t0 = pc()
        eps = _epsilon(cfg, env_steps - 1, total_steps)
        actions = learner.act(obs, eps)
        t1 = pc()
        t = venv.t.copy()
        pos = venv.pos
        step = venv.step(actions)
        t2 = pc()
        buffer.add(t, pos, actions, step.reward, step.terminated, step.truncated)
        t3 = pc()
        obs = step.obs
        if (step.terminated | step.truncated).any():
            fin = step.episode_return[~np.isnan(step.episode_return)]
            fin.tolist()
        ns["act"] += t1 - t0
        ns["env"] += t2 - t1
        ns["insert"] += t3 - t2
        if env_steps >= ac.learning_starts and env_steps % ac.train_freq == 0:
            for _g in range(ac.gradient_steps):
                t4 = pc()
                batch = buffer.sample(ac.batch_size)
                t5 = pc()
                g0 = timed.ns
                learner.update(batch)
                t6 = pc()
                ns["sample"] += t5 - t4
                ns["gather"] += timed.ns - g0
                ns["update"] += (t6 - t5) - (timed.ns - g0)
                n_updates += 1
    total_ns = pc() - t_start
    cpu = time.process_time() - c0
    ns["other"] = total_ns - sum(ns[s] for s in SECTIONS if s != "other")

    # The floor: the update math alone, on one fixed batch whose observations are already gathered.
    batch = buffer.sample(ac.batch_size)
    learner.market = timed
    learner.update(batch)  # fills the learner's observation buffer for this batch
    learner.market = _StubMarket(market)
    # short blocks, many of them, keep the least disturbed: the machine may be shared
    for _ in range(30):
        learner.update(batch)
    t0 = pc()
    for _ in range(10):
        learner.update(batch)
    reps = max(2, int(5e6 / ((pc() - t0) / 10)))  # about 5 ms per block
    times = []
    for _ in range(40):
        t0 = pc()
        for _ in range(reps):
            learner.update(batch)
        times.append((pc() - t0) / reps)
    floor_ns = min(times)

    agent_steps = total_steps * k
    # On a shared machine the wall time of each section includes time the process was descheduled; that lands on
    # sections in proportion to their length, so shares are unbiased, and CPU time rescales the absolute figures.
    cpu_per_wall = cpu / (total_ns / 1e9)
    return {
        "k": k, "steps": total_steps, "agent_steps": agent_steps, "updates": n_updates,
        "total_s": total_ns / 1e9, "cpu_s": cpu, "agent_steps_per_s": agent_steps / (total_ns / 1e9),
        "agent_steps_per_cpu_s": agent_steps / cpu,
        "sections_s": {s: ns[s] / 1e9 for s in SECTIONS},
        "share": {s: ns[s] / total_ns for s in SECTIONS},
        "cpu_us_per_env_step": {s: ns[s] / 1e3 / total_steps * cpu_per_wall for s in SECTIONS},
        "cpu_us_per_update": {s: ns[s] / 1e3 / max(n_updates, 1) * cpu_per_wall for s in ("sample", "gather", "update")},
        "floor_us_per_update": floor_ns / 1e3,
        "floor_fraction": floor_ns * n_updates / 1e9 / cpu,
        "env_sampling_fraction": (ns["env"] + ns["sample"] + ns["gather"]) / total_ns,
    }


def print_profile(p: dict[str, Any]) -> None:
    print(f"\nProfile dqlray K={p['k']}: {p['steps']:,} env steps per seed, {p['updates']:,} updates, "
          f"{p['total_s']:.1f} s wall, {p['cpu_s']:.1f} s CPU ({p['agent_steps_per_cpu_s']:,.0f} agent-steps per "
          f"CPU-s)")
    print(f"  {'section':<10}{'share':>8}{'CPU us/env step':>17}{'CPU us/update':>15}")
    for s in SECTIONS:
        per_u = p["cpu_us_per_update"].get(s)
        print(f"  {s:<10}{100 * p['share'][s]:>7.1f}%{p['cpu_us_per_env_step'][s]:>17.1f}"
              f"{'' if per_u is None else f'{per_u:.0f}':>15}")
    upd = p["cpu_us_per_update"]
    print(f"  floor, update math alone (DQNLearner.update on a gathered batch, best 5 ms block of 40): "
          f"{p['floor_us_per_update']:.0f} us/update x {p['updates']:,} updates = {100 * p['floor_fraction']:.0f}% of "
          f"the loop's CPU time (sample+gather+update in the loop: {upd['sample'] + upd['gather'] + upd['update']:.0f}"
          f" us/update)")
    print(f"  env + sampling (env, sample, gather): {100 * p['env_sampling_fraction']:.1f}% of training time")


def run_profiles(ks: list[int], args: argparse.Namespace, passthrough: list[str]) -> list[dict[str, Any]]:
    """Profile each K in its own child process pinned to the idlest core; print and return the results."""
    from bench.throughput import idlest_core

    out = []
    steps = getattr(args, "profile_steps", None) or args.steps
    for k in ks:
        core = idlest_core()
        cmd = [sys.executable, "-m", "bench.profile_train", *passthrough, "--k", str(k), "--steps", str(steps),
               "--child"]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800,
                              preexec_fn=lambda c=core: os.sched_setaffinity(0, {c}))
        if proc.returncode != 0:
            raise RuntimeError(f"profile K={k} failed:\n{proc.stderr[-3000:]}")
        p = json.loads(proc.stdout.strip().splitlines()[-1])
        print_profile(p)
        out.append(p)
    return out


def main() -> None:
    from bench.throughput import _strip

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="1,8")
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--data", default="data/test_small.csv")
    ap.add_argument("--config", default=None)
    ap.add_argument("--learning-starts", dest="learning_starts", type=int, default=None)
    ap.add_argument("--buffer-size", dest="buffer_size", type=int, default=None)
    ap.add_argument("--learning-rate", dest="learning_rate", type=float, default=None)
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--target-update-freq", dest="target_update_freq", type=int, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(profile(int(args.k), args.steps, args)))
        return
    run_profiles([int(x) for x in args.k.split(",")], args, _strip(sys.argv[1:], {"--k", "--steps"}, set()))


if __name__ == "__main__":
    main()
