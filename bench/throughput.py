"""Training throughput: dqlray against Stable-Baselines3 DQN on the same env, data and budget (issue 7).

    python -m bench.throughput [--steps 20000] [--k 1,4,8,16] [--repeats 2] [--sb3-seeds N] [--skip-sb3]
                               [--no-profile] [--json out.json]

Every configuration trains in its own child process pinned to one core (the idlest at launch), so that peak RSS
(``ru_maxrss``) is per configuration and the children do not share a core. Configurations are interleaved over
``--repeats`` rounds and the table reports medians; round r uses seeds ``r*K .. r*K+K-1``, so each row's test
Sharpe pools distinct seeds (``--sb3-seeds`` adds SB3 runs, for a fairer comparison of its Sharpe). Both learners
see the same ``dqlray/Trading-v0`` env on the training part of the same data, with the same network, batch, replay
ratio, learning start, buffer, target period, learning rate, discount, Huber loss, gradient clipping, exploration
schedule and reward scale, and one torch thread.

Throughput is agent-steps per second of wall time (summed over seeds for K > 1), and the same per second of the
child's CPU time, which is the steadier figure on a shared machine. SB3 is timed over ``model.learn``; dqlray over
``train()``, market build and final validation included. The test split is then scored with
``dqlray.evaluation.evaluate_policy`` for both (same costs), so speed is not bought with worse learning.

Then (unless ``--no-profile``) :mod:`bench.profile_train` for K=1 and K=8: where a training step's time goes, and
the update math alone as the floor (see ``bench/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GOAL_K8 = 10.0
GOAL_K1 = 1.5
GOAL_RSS_MB = 600.0


# ----------------------------------------------------------------------------------------------------------- config
def bench_config(k: int, seed: int, steps: int, args: argparse.Namespace):
    """The dqlray config of one run, and its per-seed env-step budget (whole episodes of the training part)."""
    from dqlray.config import load_config
    from dqlray.data import load_ohlcv
    from dqlray.parts import build_market
    from dqlray.trainer import steps_per_episode

    base = load_config(args.config, overrides={"data": {"data_file": args.data}})
    agent = {"hidden": [64, 64], "batch_size": 64, "train_freq": 4, "gradient_steps": 1, "agent_type": "dqn",
             "loss": "huber", "max_grad_norm": 10.0, "n_step": 1, "tau": 1.0}
    for name in ("learning_starts", "buffer_size", "learning_rate", "gamma", "target_update_freq"):
        v = getattr(args, name)
        if v is not None:
            agent[name] = v
    cfg = base.replace({"agent": agent, "train": {"num_seeds": k, "seed": seed, "torch_threads": 1,
                                                    "device": "cpu"}})
    data = load_ohlcv(cfg.data.data_file)
    market = build_market(cfg, data)
    per_ep = steps_per_episode(cfg, market)
    episodes = max(1, round(steps / per_ep))
    cfg = cfg.replace({"train": {"episodes": episodes, "eval_every": episodes, "checkpoint_every": episodes}})
    return cfg, data, market, episodes * per_ep


def _rusage() -> tuple[float, float]:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_maxrss / 1024.0, ru.ru_utime + ru.ru_stime  # MB on Linux (ru_maxrss is in KiB)


# ----------------------------------------------------------------------------------------------------------- children
def child_dqlray(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train dqlray with K seeds in lockstep; time it; score the test part."""
    import torch

    from dqlray.trainer import replay_bytes, train
    from dqlray.workflow import evaluate_all

    torch.set_num_threads(1)
    k = spec["k"]
    cfg, data, _, steps = bench_config(k, spec["seed"], args.steps, args)
    c0, t0 = time.process_time(), time.perf_counter()
    result = train(cfg, data, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # the trainer's own figure: time inside the episode loops (no market build, no validation)
    prev = [0] + [h["env_steps"] for h in result.history[:-1]]
    loop_wall = sum((h["env_steps"] - p) * k / h["steps_per_s"] for h, p in zip(result.history, prev, strict=True))
    evaluation, curves = evaluate_all(result.learner, result.market, cfg, "test")
    rss, _ = _rusage()
    return {
        "name": f"dqlray K={k}", "kind": "dqlray", "k": k, "seed": spec["seed"], "agent_steps": steps * k,
        "wall_s": wall, "cpu_s": cpu, "loop_wall_s": loop_wall, "steps_per_s": steps * k / wall,
        "steps_per_cpu_s": steps * k / cpu, "peak_rss_mb": rss,
        "replay_predicted": replay_bytes(cfg), "replay_measured": result.extra["replay_bytes"],
        "test_sharpe": [m["sharpe"] for m in evaluation["agent"]["per_seed"]],
        "test_return": [m["total_return"] for m in evaluation["agent"]["per_seed"]],
        "buy_and_hold_sharpe": evaluation["baselines"].get("buy_and_hold", {}).get("sharpe"),
        "updates": result.learner.updates,
    }


class SB3Greedy:
    """SB3's greedy policy with the dqlray evaluation ``predict(obs) -> actions`` interface."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, obs):
        import numpy as np

        actions, _ = self.model.predict(obs, deterministic=True)
        return np.asarray(actions, dtype=np.int64).reshape(len(obs))


def child_sb3(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """SB3 DQN, one agent, on a DummyVecEnv of one dqlray TradingEnv with the same settings as dqlray's run."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.vec_env import DummyVecEnv

    from dqlray.env import TradingEnv
    from dqlray.evaluation import evaluate_policy

    torch.set_num_threads(1)
    cfg, _, market, steps = bench_config(1, spec["seed"], args.steps, args)
    ac, ec = cfg.agent, cfg.env

    def make() -> gym.Env:
        env = TradingEnv(market, part="train", window=cfg.data.window, positions=ec.positions, fee_bps=ec.fee_bps,
                         slippage_bps=ec.slippage_bps, episode_length=ec.episode_length,
                         random_start=ec.random_start, ruin_fraction=ec.ruin_fraction)
        # dqlray learns on reward * reward_scale (log returns in percent); give SB3 the same targets.
        return gym.wrappers.TransformReward(env, lambda r: r * ac.reward_scale)

    venv = DummyVecEnv([make])
    model = DQN(
        "MlpPolicy", venv, learning_rate=ac.learning_rate, buffer_size=ac.buffer_size,
        learning_starts=ac.learning_starts, batch_size=ac.batch_size, tau=ac.tau, gamma=ac.gamma,
        train_freq=ac.train_freq, gradient_steps=ac.gradient_steps,
        # ours counts gradient steps between target syncs, SB3 counts env steps
        target_update_interval=ac.target_update_freq * ac.train_freq,
        exploration_fraction=ac.eps_decay_fraction, exploration_initial_eps=ac.eps_start,
        exploration_final_eps=ac.eps_end, max_grad_norm=ac.max_grad_norm,
        policy_kwargs={"net_arch": list(ac.hidden)}, seed=spec["seed"], device="cpu", verbose=0,
    )
    c0, t0 = time.process_time(), time.perf_counter()
    model.learn(total_timesteps=steps, progress_bar=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rb = model.replay_buffer
    rb_bytes = sum(getattr(rb, n).nbytes for n in ("observations", "next_observations", "actions", "rewards",
                                                  "dones", "timeouts") if getattr(rb, n, None) is not None)
    res = evaluate_policy(SB3Greedy(model), market, part="test", env=ec, n_envs=1, name="sb3",
                          periods=cfg.train.periods_per_year)
    rss, _ = _rusage()
    return {
        "name": "SB3 DQN", "kind": "sb3", "k": 1, "seed": spec["seed"], "agent_steps": steps,
        "wall_s": wall, "cpu_s": cpu, "loop_wall_s": wall, "steps_per_s": steps / wall,
        "steps_per_cpu_s": steps / cpu, "peak_rss_mb": rss, "replay_predicted": None, "replay_measured": rb_bytes,
        "test_sharpe": [res.metrics[0]["sharpe"]], "test_return": [res.metrics[0]["total_return"]],
        "buy_and_hold_sharpe": None, "updates": int(model._n_updates),
    }


# ----------------------------------------------------------------------------------------------------------- parent
def idlest_core() -> int:
    """The allowed core with the most idle time over the next 0.3 s (the machine may be shared)."""
    allowed = sorted(os.sched_getaffinity(0))

    def idle() -> dict[int, int]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    parts = line.split()
                    out[int(parts[0][3:])] = int(parts[4]) + int(parts[5])
        return out

    try:
        a = idle()
        time.sleep(0.3)
        b = idle()
        return max(allowed, key=lambda c: b.get(c, 0) - a.get(c, 0))
    except OSError:
        return allowed[-1]


def run_child(spec: dict[str, Any], argv: list[str], timeout: float, module: str = "bench.throughput"
              ) -> dict[str, Any]:
    """Run ``python -m module ... --child SPEC`` pinned to the idlest core; its last stdout line is the result."""
    core = idlest_core()
    cmd = [sys.executable, "-m", module, *argv, "--child", json.dumps(spec)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    if proc.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["core"] = core
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: medians over repeats, Sharpe pooled over all seeds of all repeats."""
    import numpy as np

    rows = []
    for name in dict.fromkeys(r["name"] for r in runs):
        rs = [r for r in runs if r["name"] == name]
        sh = np.array([s for r in rs for s in r["test_sharpe"]], dtype=float)
        rows.append({
            "name": name, "k": rs[0]["k"], "kind": rs[0]["kind"], "n": len(rs),
            "steps_per_s": _median([r["steps_per_s"] for r in rs]),
            "steps_per_s_all": [round(r["steps_per_s"]) for r in rs],
            "steps_per_cpu_s": _median([r["steps_per_cpu_s"] for r in rs]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "replay_predicted": rs[0]["replay_predicted"], "replay_measured": rs[0]["replay_measured"],
            "sharpe_mean": float(sh.mean()), "sharpe_sd": float(sh.std(ddof=1)) if len(sh) > 1 else 0.0,
            "sharpe_n": len(sh), "agent_steps": rs[0]["agent_steps"],
            "buy_and_hold_sharpe": rs[0]["buy_and_hold_sharpe"],
        })
    return rows


def print_table(rows: list[dict[str, Any]], runs: list[dict[str, Any]], steps: int) -> dict[str, bool | None]:
    sb3 = next((r for r in rows if r["kind"] == "sb3"), None)
    print(f"\nTraining throughput, {steps:,} env steps per agent, one core and one torch thread per configuration "
          f"(median of {rows[0]['n']} runs)")
    head = (f"{'configuration':<15}{'agent-steps/s':>14}{'x SB3':>7}{'steps/CPU-s':>13}{'x SB3':>7}"
            f"{'peak RSS MB':>12}{'replay MB pred/meas':>21}{'test Sharpe (n)':>20}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r["steps_per_s"] / sb3["steps_per_s"] if sb3 else float("nan")
        ratio_cpu = r["steps_per_cpu_s"] / sb3["steps_per_cpu_s"] if sb3 else float("nan")
        rep = f"{_mb(r['replay_predicted'])}/{_mb(r['replay_measured'])}"
        sh = f"{r['sharpe_mean']:.2f}±{r['sharpe_sd']:.2f} ({r['sharpe_n']})"
        print(f"{r['name']:<15}{r['steps_per_s']:>14,.0f}{ratio:>7.1f}{r['steps_per_cpu_s']:>13,.0f}"
              f"{ratio_cpu:>7.1f}{r['peak_rss_mb']:>12.0f}{rep:>21}{sh:>20}")
    bh = next((r["buy_and_hold_sharpe"] for r in rows if r["buy_and_hold_sharpe"] is not None), None)
    if bh is not None:
        print(f"(buy and hold on the test part: Sharpe {bh:.2f}; SB3's replay stores two float32 observations per "
              "transition, dqlray's a bar index and a position)")
    print("runs (agent-steps/s): " + "; ".join(f"{r['name']} {r['steps_per_s_all']}" for r in rows))
    goals: dict[str, bool | None] = {}
    by_k = {r["k"]: r for r in rows if r["kind"] == "dqlray"}
    if sb3:
        for k, goal in ((1, GOAL_K1), (8, GOAL_K8)):
            if k in by_k:
                rw = by_k[k]["steps_per_s"] / sb3["steps_per_s"]
                rc = by_k[k]["steps_per_cpu_s"] / sb3["steps_per_cpu_s"]
                goals[f"K={k} >= {goal:g}x SB3 (wall)"] = rw >= goal
                goals[f"K={k} >= {goal:g}x SB3 (CPU)"] = rc >= goal
                print(f"goal K={k} >= {goal:g}x SB3's steps/s: {rw:.1f}x per wall-s "
                      f"{'met' if rw >= goal else 'NOT met'}, {rc:.1f}x per CPU-s {'met' if rc >= goal else 'NOT met'}")
        verdicts = []
        for r in (r for r in rows if r["kind"] == "dqlray"):
            d = r["sharpe_mean"] - sb3["sharpe_mean"]
            se = (r["sharpe_sd"] ** 2 / r["sharpe_n"] + sb3["sharpe_sd"] ** 2 / sb3["sharpe_n"]) ** 0.5
            v = "better" if d >= 0 else ("equal within noise" if d > -2 * se else "WORSE")
            verdicts.append((r["name"], d, se, v))
        goals["test Sharpe >= SB3"] = all(v != "WORSE" for *_, v in verdicts)
        print(f"goal test Sharpe equal or better than SB3's ({sb3['sharpe_mean']:.2f}, {sb3['sharpe_n']} seeds): "
              f"{'met' if goals['test Sharpe >= SB3'] else 'NOT met'} ("
              + "; ".join(f"{n} {d:+.2f}±{se:.2f} {v}" for n, d, se, v in verdicts)
              + "; difference of means ± its standard error, 'equal within noise' when above -2 SE)")
    big = [r for r in rows if r["kind"] == "dqlray" and r["peak_rss_mb"] >= GOAL_RSS_MB]
    goals["peak RSS < 600 MB"] = not big
    verdict = "met" if not big else "NOT met by " + ", ".join(r["name"] for r in big)
    print(f"goal peak RSS of a trial < {GOAL_RSS_MB:.0f} MB: {verdict}")
    ok = all(r["replay_predicted"] == r["replay_measured"] for r in rows if r["kind"] == "dqlray")
    by_seed: dict[int, set[float]] = {}
    for r in runs:
        if r["kind"] == "dqlray":
            for i, sh in enumerate(r["test_sharpe"]):
                by_seed.setdefault(r["seed"] + i, set()).add(round(sh, 10))
    shared = [s for s, v in by_seed.items() if len(v) >= 1 and sum(
        1 for r in runs if r["kind"] == "dqlray" and r["seed"] <= s < r["seed"] + r["k"]) > 1]
    same = all(len(by_seed[s]) == 1 for s in shared)
    print(f"lockstep check: {len(shared)} seeds trained in more than one configuration reach "
          f"{'identical' if same else 'DIFFERENT'} test Sharpe (a K-seed run equals K one-seed runs)")
    print(f"replay buffer bytes predicted by dqlray.trainer.replay_bytes(config) == measured: {'yes' if ok else 'NO'}")
    return goals


def dqlray_version() -> str:
    """The dqlray commit measured (read-only ``git`` calls), with ``+dirty`` when dqlray/ has local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "dqlray"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20_000, help="env steps per agent (rounded to whole episodes)")
    ap.add_argument("--k", default="1,4,8,16", help="seeds in lockstep, comma separated")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the table shows medians")
    ap.add_argument("--skip-sb3", action="store_true", help="dqlray only")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of dqlray's training step")
    ap.add_argument("--profile-k", default="1,8", help="K values to profile")
    ap.add_argument("--profile-steps", type=int, default=10_000, help="env steps per seed in the profile")
    ap.add_argument("--sb3-seeds", type=int, default=0,
                    help="SB3 runs in all (at least --repeats): more seeds for its test Sharpe")
    ap.add_argument("--data", default="data/test_small.csv")
    ap.add_argument("--config", default=None, help="YAML overrides for both learners (configs/*.yaml)")
    ap.add_argument("--learning-starts", dest="learning_starts", type=int, default=None)
    ap.add_argument("--buffer-size", dest="buffer_size", type=int, default=None)
    ap.add_argument("--learning-rate", dest="learning_rate", type=float, default=None)
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--target-update-freq", dest="target_update_freq", type=int, default=None,
                    help="gradient steps between target syncs (SB3 gets this x train_freq env steps)")
    ap.add_argument("--json", default=None, help="write all runs and the summary here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        out = child_sb3(spec, args) if spec["kind"] == "sb3" else child_dqlray(spec, args)
        print(json.dumps(out))
        return

    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    passthrough = _strip(passthrough, {"--json", "--k", "--repeats", "--profile-k", "--profile-steps", "--sb3-seeds"},
                         {"--skip-sb3", "--no-profile"})
    ks = [int(x) for x in args.k.split(",") if x]
    specs = ([] if args.skip_sb3 else [{"kind": "sb3", "k": 1}]) + [{"kind": "dqlray", "k": k} for k in ks]
    import platform

    import torch

    print(f"dqlray {dqlray_version()}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    t_all = time.perf_counter()
    runs = []
    for rep in range(args.repeats):
        for spec in specs:
            s = dict(spec, seed=rep * spec["k"])
            r = run_child(s, passthrough, timeout=1800)
            print(f"  round {rep + 1}/{args.repeats} {r['name']:<13} seed {s['seed']:>3} core {r['core']}: "
                  f"{r['steps_per_s']:>9,.0f} agent-steps/s ({r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU), "
                  f"test Sharpe {', '.join(f'{x:.2f}' for x in r['test_sharpe'])}", flush=True)
            runs.append(r)
    if not args.skip_sb3:
        for seed in range(args.repeats, args.sb3_seeds):
            r = run_child({"kind": "sb3", "k": 1, "seed": seed}, passthrough, timeout=1800)
            print(f"  extra SB3 seed {seed:>3} core {r['core']}: {r['steps_per_s']:>9,.0f} agent-steps/s "
                  f"({r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU), test Sharpe {r['test_sharpe'][0]:.2f}",
                  flush=True)
            runs.append(r)
    rows = summarise(runs)
    goals = print_table(rows, runs, runs[0]["agent_steps"] // runs[0]["k"])
    prof = None
    if not args.no_profile:
        from bench import profile_train

        prof = profile_train.run_profiles([int(x) for x in args.profile_k.split(",") if x], args, passthrough)
        if prof:
            fracs = ", ".join(f"K={p['k']} {100 * p['env_sampling_fraction']:.0f}%" for p in prof)
            goals["env + sampling < 20%"] = all(p["env_sampling_fraction"] < 0.2 for p in prof)
            print(f"goal env + buffer sampling < 20% of training time: "
                  f"{'met' if goals['env + sampling < 20%'] else 'NOT met'} ({fracs})")
    print(f"\nbenchmark wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "rows": rows, "profile": prof, "goals": goals,
                                               "argv": sys.argv[1:]}, indent=1))


def _strip(argv: list[str], with_value: set[str], flags: set[str]) -> list[str]:
    """Arguments the children need (drop the parent-only ones)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in with_value:
            skip = "=" not in a
            continue
        if name in flags:
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    main()
