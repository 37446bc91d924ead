"""The Tune callback: driven directly with simple trial objects, and once inside a real local Ray Tune run."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_telegram import FakeTelegram

from dqlray.notify import Notifier, NotifyConfig
from dqlray.notify.tune_callback import TelegramTuneCallback

CHAT = "4242"
EXPERIMENT = "hp_sweep_lr0.001_g0.99"
MAX_T = 10  # episodes: report() below reports step // 100 of them


@dataclass
class FakeTrial:
    """What the callback reads from a Tune trial."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)
    error_msg: str | None = None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_cfg(tg, tmp_path, **kw) -> NotifyConfig:
    kw.setdefault("min_interval_s", 0.0)
    kw.setdefault("read_timeout_s", 2.0)
    return NotifyConfig(token=tg.token, chat_id=CHAT, api_base=tg.url, spool_dir=tmp_path / "spool", **kw)


def notifier_for(tg, tmp_path, **kw) -> Notifier:
    return Notifier(make_cfg(tg, tmp_path, **kw))


def make_trials(n: int) -> list[FakeTrial]:
    return [FakeTrial(f"a1b2c_{i:05d}", {"lr": 10 ** -(2 + i % 3), "gamma": 0.99, "data": "/home/me/x.csv"})
            for i in range(n)]


def report(cb: TelegramTuneCallback, trials: list[FakeTrial], trial: FakeTrial, step: int, sharpe: float) -> None:
    result = {"val_sharpe": sharpe, "val_sharpe_std": 0.1, "val_return": sharpe / 10, "env_steps": step,
              "episodes": step // 100, "training_iteration": step // 100, "loss": 0.01, "epsilon": 0.1}
    trial.last_result = result
    cb.on_trial_result(iteration=0, trials=trials, trial=trial, result=result)


def flush(cb: TelegramTuneCallback) -> None:
    assert cb._notifier is not None and cb._notifier.flush(10.0)


def test_dashboard_is_one_message_edited_across_many_results(tg, tmp_path):
    cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path), experiment=EXPERIMENT, max_t=MAX_T,
                              edit_interval_s=0.0, space_summary={"lr": "loguniform(1e-4, 1e-2)", "gamma": "[0.95, 0.99]"},
                              resources={"nodes": 2, "CPU": 32})
    trials = make_trials(4)
    cb.setup(total_num_samples=4)
    for trial in trials:
        cb.on_trial_start(iteration=0, trials=trials, trial=trial)
    for step in range(100, 1001, 100):
        for i, trial in enumerate(trials):
            if i == 3 and step > 200:
                continue  # stopped by ASHA at 200 steps
            report(cb, trials, trial, step, sharpe=0.1 * i + step / 1000)
            flush(cb)  # let each update reach the server, so edits (not coalescing) are what is tested
    cb.on_trial_complete(iteration=0, trials=trials, trial=trials[3])
    for trial in trials[:2]:
        cb.on_trial_complete(iteration=0, trials=trials, trial=trial)
    cb.on_experiment_end(trials=trials)

    start, dashboard = tg.messages
    assert start["plain"].startswith(f"🚀 Sweep started · {EXPERIMENT}") and not start["silent"]
    assert "lr: loguniform(1e-4, 1e-2)" in start["plain"] and "2 nodes, 32 CPU" in start["plain"]
    assert dashboard["silent"] and len(dashboard["edits"]) >= 20
    assert 400 not in tg.statuses()
    final = dashboard["plain"]
    assert "▶ running 1 · ✓ finished 2 · ✂ stopped by ASHA 1 · ✗ errored 0 · … pending 0" in final
    assert "a1b2c_00002" in final.split("Top 4")[1].splitlines()[2]  # best trial first
    assert "/home/me" not in final  # config summaries leave paths out


def test_dashboard_edits_are_throttled_to_the_interval(tg, tmp_path):
    clock = Clock()
    cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path), experiment=EXPERIMENT, edit_interval_s=30.0, clock=clock)
    trials = make_trials(3)
    cb.setup(total_num_samples=3)
    for k in range(100):  # 100 results within 29 s: one dashboard send
        clock.t += 0.29
        report(cb, trials, trials[k % 3], 100 + k, sharpe=k / 100)
        cb.on_step_end(iteration=k, trials=trials)
    flush(cb)
    assert len(tg.messages) == 2 and tg.edits == []
    clock.t += 1.5  # just over 30 s after the first dashboard (sent at +0.29 s)
    cb.on_step_end(iteration=101, trials=trials)
    flush(cb)
    assert len(tg.edits) == 1
    cb._notifier.close(1.0)


def test_errored_trials_are_digested_into_one_message_per_burst(tg, tmp_path):
    clock = Clock()
    cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path), experiment=EXPERIMENT, error_digest_s=60.0,
                              edit_interval_s=1e6, clock=clock)
    trials = make_trials(8)
    cb.setup(total_num_samples=8)
    for i, trial in enumerate(trials[:5]):
        clock.t += 2
        trial.error_msg = f"Traceback (most recent call last):\n  File \"t.py\"\nValueError: NaN loss in trial {i}"
        cb.on_trial_error(iteration=i, trials=trials, trial=trial)
    flush(cb)
    assert not any("errored ·" in t.split("\n")[0] for t in tg.texts())  # still collecting the burst
    clock.t += 60
    cb.on_step_end(iteration=9, trials=trials)
    flush(cb)
    [digest] = [m for m in tg.messages if "errored" in m["plain"].split("\n")[0]]
    assert digest["plain"].startswith(f"❌ 5 trials errored · {EXPERIMENT}") and not digest["silent"]
    assert all(f"a1b2c_{i:05d}" in digest["plain"] and f"NaN loss in trial {i}" in digest["plain"]
               for i in range(5))
    trials[5].error_msg = "RuntimeError: CUDA out of memory"
    cb.on_trial_error(iteration=10, trials=trials, trial=trials[5])
    clock.t += 61
    cb.on_step_end(iteration=11, trials=trials)
    cb.on_experiment_end(trials=trials)
    digests = [t for t in tg.texts() if "errored ·" in t.split("\n")[0]]
    assert len(digests) == 2 and digests[1].startswith("❌ 1 trial errored") and "Errored so far: 6" in digests[1]


def test_restored_sweep_resends_nothing_and_edits_the_same_dashboard(tg, tmp_path, monkeypatch):
    cfg = make_cfg(tg, tmp_path)
    cb = TelegramTuneCallback(notifier=Notifier(cfg), experiment=EXPERIMENT, edit_interval_s=0.0, error_digest_s=0.0,
                              max_t=MAX_T)
    trials = make_trials(3)
    cb.setup(total_num_samples=3)
    report(cb, trials, trials[0], 100, 0.5)
    trials[1].error_msg = "ValueError: bad gamma"
    cb.on_trial_error(iteration=1, trials=trials, trial=trials[1])
    flush(cb)
    state = cb.get_state()
    dashboard_id = state["dashboard_message_id"]
    assert dashboard_id is not None and state["start_sent"] and state["errors_reported"] == ["a1b2c_00001"]
    pickled = pickle.dumps(cb)  # what Tune writes to tuner.pkl
    assert tg.token.encode() not in pickled and tg.token.split(":")[1].encode() not in pickled
    assert tg.token.encode() not in pickle.dumps(state)
    cb._notifier.close(1.0)
    sent_before = len(tg.messages)

    # The driver dies; `Tuner.restore` unpickles the callback and calls set_state() before setup().
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT)
    monkeypatch.setenv("DQLRAY_TELEGRAM_API_BASE", tg.url)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DQLRAY_NOTIFY_SPOOL", str(tmp_path / "spool"))
    monkeypatch.delenv("DQLRAY_NOTIFY_CONFIG", raising=False)
    restored = pickle.loads(pickled)
    assert restored._notifier is None and restored.secrets == ()  # neither credentials nor a sender came back
    restored.set_state(state)
    restored.setup(total_num_samples=3)
    report(restored, trials, trials[0], 200, 0.7)
    report(restored, trials, trials[2], 100, 0.2)
    restored.on_trial_error(iteration=2, trials=trials, trial=trials[1])  # reported before the restore
    restored.on_experiment_end(trials=trials)

    assert len(tg.messages) == sent_before  # no second start, dashboard or error message
    edits_after = [e for e in tg.edits if e["t"] > tg.messages[-1]["t"]]
    assert edits_after and {e["message_id"] for e in edits_after} == {dashboard_id}
    assert "0.7" in next(m for m in tg.messages if m["message_id"] == dashboard_id)["plain"]


def test_callback_pickles_without_secrets_or_threads(tg, tmp_path):
    import ray.cloudpickle as cloudpickle

    cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path), experiment=EXPERIMENT, edit_interval_s=0.0)
    cb.setup(total_num_samples=1)
    report(cb, [], FakeTrial("t1", {"lr": 0.1}), 100, 0.3)
    flush(cb)
    for dump in (pickle.dumps, cloudpickle.dumps):
        data = dump(cb)
        assert tg.token.encode() not in data and tg.token.split(":")[1].encode() not in data
        clone = pickle.loads(data)
        assert clone._notifier is None and clone.get_state()["start_sent"]
    cb._notifier.close(1.0)


def test_a_27_trial_sweep_stays_under_telegram_limits(token, tmp_path):
    """Scaled down in time: the governor spaces messages 0.25 s (real: 1 s), the dashboard interval is 0.5 s (30 s),
    and the server answers 429 to anything closer than 0.1 s per chat (slack for loopback jitter). The exact 1/s and
    20/min pacing is checked with a fake clock in test_notify_sender.py."""
    with FakeTelegram(token, chats=[CHAT], min_interval_s=0.1) as tg:
        cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path, min_interval_s=0.25), experiment=EXPERIMENT,
                                  max_t=MAX_T, edit_interval_s=0.5, error_digest_s=0.3, num_samples=27)
        trials = make_trials(27)
        cb.setup(total_num_samples=27)
        t0 = time.monotonic()
        for step in range(100, 1001, 100):
            for i, trial in enumerate(trials):
                if step == 100:
                    cb.on_trial_start(iteration=0, trials=trials, trial=trial)
                if i < 3 and step == 300:
                    trial.error_msg = "ValueError: diverged"
                    cb.on_trial_error(iteration=0, trials=trials, trial=trial)
                elif i >= 3 and (step <= 300 or i % 3 == 0):
                    report(cb, trials, trial, step, sharpe=i / 27 + step / 1e4)
                    if step == 300 and i % 3:
                        cb.on_trial_complete(iteration=0, trials=trials, trial=trial)  # ASHA stop
            cb.on_step_end(iteration=step, trials=trials)
            time.sleep(0.15)
        for trial in trials[3::3]:
            cb.on_trial_complete(iteration=0, trials=trials, trial=trial)
        cb.on_experiment_end(trials=trials)
        elapsed = time.monotonic() - t0
        assert 429 not in tg.statuses()
        times = sorted(r["t"] for r in tg.requests if r["status"] == 200)
        assert len(times) >= 5 and all(b - a >= 0.1 for a, b in zip(times, times[1:], strict=False))
        # start + one dashboard + one error digest; edits at most one per interval
        assert len(tg.messages) == 3
        assert len(tg.edits) <= elapsed / 0.5 + 2
        final = tg.messages[1]["plain"]
        assert "✓ finished 8 · ✂ stopped by ASHA 16 · ✗ errored 3 · … pending 0" in final


def test_real_ray_tune_run_with_asha_sends_start_and_edits_one_dashboard(tg, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")

    def trainable(config):
        for i in range(1, 5):
            tune.report({"val_sharpe": config["lr"] * i, "val_sharpe_std": 0.01, "val_return": 0.01 * i,
                         "env_steps": 100 * i, "episodes": i, "loss": 0.1, "epsilon": 0.5})

    cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path), experiment=EXPERIMENT, max_t=4,  # episodes
                              edit_interval_s=0.0, space_summary={"lr": "grid [0.1, 0.2, 0.3]"})
    owns_ray = not ray.is_initialized()  # another test may have started Ray in this process
    if owns_ray:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"lr": tune.grid_search([0.1, 0.2, 0.3])},
            tune_config=tune.TuneConfig(
                metric="val_sharpe", mode="max", reuse_actors=True,
                scheduler=ASHAScheduler(time_attr="env_steps", max_t=400, grace_period=100, reduction_factor=2)),
            run_config=tune.RunConfig(name="notify_test", storage_path=str(tmp_path / "ray"), callbacks=[cb],
                                      verbose=0),
        )
        results = tuner.fit()
    finally:
        if owns_ray:
            ray.shutdown()
    assert not results.errors
    start, dashboard = tg.messages
    assert start["plain"].startswith(f"🚀 Sweep started · {EXPERIMENT}")
    assert "Trials: 3" in start["plain"] and "CPU" in start["plain"]
    assert dashboard["plain"].startswith(f"📊 Sweep finished (trials) · {EXPERIMENT}")
    assert len(dashboard["edits"]) >= 1
    assert "✗ errored 0 · … pending 0" in dashboard["plain"] and "▶ running 0" in dashboard["plain"]
    assert 400 not in tg.statuses()
    # Tune pickled the callback (tuner.pkl) and its state (callback-states-*.pkl): no token there.
    pickles = list(Path(tmp_path / "ray").rglob("*.pkl"))
    names = {p.name for p in pickles}
    assert "tuner.pkl" in names and any(n.startswith("callback-states-") for n in names), names
    for path in pickles:
        assert tg.token.split(":")[1].encode() not in path.read_bytes(), path


def test_one_notifier_per_process_and_a_no_op_one_without_credentials(tg, tmp_path, monkeypatch):
    from dqlray.notify import RunNotifier, get_notifier

    off = get_notifier()  # nothing configured (conftest clears the environment)
    assert off is get_notifier() and not off.enabled and off.config is None
    RunNotifier(off, EXPERIMENT).finished(final_reward=0.1, test_metrics={"sharpe": 1.0}, baselines=None,
                                          model_path=None)  # no `if` needed: a no-op
    assert off.pending() == 0 and off.flush(0.0)
    off.close()
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT)
    monkeypatch.setenv("DQLRAY_TELEGRAM_API_BASE", tg.url)
    on = get_notifier(token=None)
    assert on is not off and on.enabled and get_notifier() is on  # a closed one is replaced, then shared


def test_restored_callback_shares_the_drivers_notifier_made_from_the_flags(tg, tmp_path, monkeypatch):
    """Issue 15: after Tuner.restore the callback uses the notifier the sweep driver made, even when the credentials
    came only from the guide's --telegram_token/--telegram_chat_id flags (nothing in the environment)."""
    from dqlray.notify import CommandLineSecretWarning, get_notifier

    cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path), experiment=EXPERIMENT, edit_interval_s=0.0)
    trials = make_trials(2)
    cb.setup(total_num_samples=2)
    report(cb, trials, trials[0], 100, 0.5)
    flush(cb)
    state, pickled = cb.get_state(), pickle.dumps(cb)
    cb._notifier.close(1.0)
    sent_before = len(tg.messages)

    monkeypatch.setenv("DQLRAY_TELEGRAM_API_BASE", tg.url)  # the resumed driver: no token in the environment
    monkeypatch.setenv("DQLRAY_NOTIFY_SPOOL", str(tmp_path / "spool"))
    with pytest.warns(CommandLineSecretWarning):
        driver = get_notifier(token=tg.token, chat_id=CHAT)
    restored = pickle.loads(pickled)
    restored.set_state(state)
    restored.setup(total_num_samples=2)
    report(restored, trials, trials[1], 100, 0.9)
    restored.on_experiment_end(trials=trials)
    assert restored.notifier is driver
    assert len(tg.messages) == sent_before  # no second start message or dashboard
    dashboard = next(m for m in tg.messages if m["message_id"] == state["dashboard_message_id"])
    assert "0.9" in dashboard["plain"] and "Sweep finished (trials)" in dashboard["plain"]


@pytest.mark.slow
def test_tune_main_sends_start_dashboard_and_result_through_one_notifier(tg, tmp_path):
    """The sweep driver, its dashboard callback and the end message share the process's one notifier."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    sweep = {"data": {"data_file": str(root / "data" / "test_small.csv")}, "env": {"episode_length": 60},
             "agent": {"learning_starts": 50, "buffer_size": 2000}, "train": {"episodes": 2, "num_seeds": 1},
             "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}},
             "sweep": {"search": "random", "num_samples": 2, "grace_period": 1, "seed": 3}}
    (tmp_path / "sweep.yaml").write_text(json.dumps(sweep))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "DQLRAY_"))}
    env.update(HOME=str(tmp_path), TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_CHAT_ID=CHAT,
               DQLRAY_TELEGRAM_API_BASE=tg.url, DQLRAY_NOTIFY_SPOOL=str(tmp_path / "spool"))
    proc = subprocess.run([sys.executable, str(root / "tune_main.py"), "--config", str(tmp_path / "sweep.yaml"),
                           "--experiment-name", "nt", "--storage-path", str(tmp_path / "store"), "--no-dashboard"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    heads = [m["plain"].split("\n")[0] for m in tg.messages if m["kind"] == "message"]
    assert heads == ["🚀 Sweep started · nt", "📊 Sweep finished (trials) · nt", "✅ Sweep finished · nt"], heads
    assert "Budget per trial: 2 episodes (ASHA)" in tg.messages[0]["plain"]
    # the verdict of summary.json, its statement and figures (issue 11); no zero-null claim of skill
    verdict = json.loads((tmp_path / "store" / "nt" / "summary.json").read_text())["verdict"]
    end = tg.messages[2]["plain"]
    assert verdict["statement"] in end and "buy&hold" in end
    assert f"beats buy-and-hold: {'yes' if verdict['beats_benchmark'] else 'no'}" in end
    assert "deflated Sharpe of the validation IR (2 trials)" in end and "probability the Sharpe is real" not in end
    assert 400 not in tg.statuses() and "dqlray notify:" not in proc.stderr  # all delivered, nothing spooled
    assert tg.token not in proc.stdout + proc.stderr


def test_packed_trials_count_as_their_configurations(tg, tmp_path):
    """Issue 14: a trial trains a pack; the dashboard counts, ranks and reports errors per configuration."""
    cb = TelegramTuneCallback(notifier=notifier_for(tg, tmp_path), experiment=EXPERIMENT, max_t=4,
                              edit_interval_s=0.0, error_digest_s=0.0, num_samples=6)
    packs = [FakeTrial(f"p{j}", {"pack": [{"id": f"c{3 * j + i:04d}", "params": {"lr": 10 ** -(2 + i)}}
                                          for i in range(3)]}) for j in range(2)]
    cb.setup(total_num_samples=6)
    for p in packs:
        cb.on_trial_start(iteration=0, trials=packs, trial=p)
    assert cb.counts() == {"running": 6, "finished": 0, "stopped": 0, "errored": 0, "pending": 0}

    def result(p, episode, statuses):
        pairs = enumerate(zip(p.config["pack"], statuses, strict=True))
        members = {m["id"]: {"episodes": episode, "status": st, "val_sharpe": 0.1 * k + episode / 5,
                             "val_sharpe_std": 0.01} for k, (m, st) in pairs if st is not None}
        # flattened, as Tune hands results to searchers (callbacks get them nested; both are read)
        res = {"episodes": episode, "members": members} if episode % 2 else {
            f"members/{cid}/{k}": v for cid, m in members.items() for k, v in m.items()}
        p.last_result = res
        cb.on_trial_result(iteration=0, trials=packs, trial=p, result=res)

    result(packs[0], 1, ["active", "stopped", "diverged"])
    result(packs[1], 1, ["active", "active", "active"])
    result(packs[0], 2, ["active", None, None])
    result(packs[0], 4, ["finished", None, None])
    cb.on_trial_complete(iteration=0, trials=packs, trial=packs[0])
    result(packs[1], 2, ["stopped", "active", "active"])
    packs[1].error_msg = "RuntimeError: worker died"
    cb.on_trial_error(iteration=0, trials=packs, trial=packs[1])  # c0003 had left its pack: it keeps its status
    cb.on_experiment_end(trials=packs)
    assert cb.counts() == {"running": 0, "finished": 1, "stopped": 2, "errored": 3, "pending": 0}
    final = next(m for m in tg.messages if m["plain"].startswith("📊"))["plain"]
    assert "✓ finished 1 · ✂ stopped by ASHA 2 · ✗ errored 3 · … pending 0" in final
    assert "c0000" in final.split("Top")[1].splitlines()[2]  # the best configuration first (0.8 after 4 episodes)
    digest = next(m for m in tg.messages if "errored ·" in m["plain"].split("\n")[0])["plain"]
    assert digest.startswith("❌ 2 trials errored") and "c0004" in digest and "c0005" in digest
    assert "c0003" not in digest and "worker died" in digest
