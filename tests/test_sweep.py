"""A real local Ray Tune sweep of packed trials (issue 14): ASHA stops configurations inside their packs, Optuna is
told each configuration's own result, a crashed pack resumes from its checkpoint, a killed or signalled driver
resumes without re-running finished configurations, a packed configuration equals its run alone, and the result
files hold one sane row per configuration."""

import csv
import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

SWEEP = {
    "data": {"data_file": str(ROOT / "data" / "test_small.csv")},
    "env": {"episode_length": 60},
    "agent": {"learning_starts": 50, "buffer_size": 2000},
    "train": {"episodes": 6, "num_seeds": 1, "checkpoint_every": 2},
    "search": {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]}, "agent.gamma": {"uniform": [0.5, 0.99]},
               "agent.hidden": {"choice": [[16, 16], [32, 32]]}},
    "grid": {"agent.learning_rate": [1e-4, 1e-3], "agent.gamma": [0.9, 0.99]},
    "sweep": {"search": "random", "num_samples": 8, "grace_period": 1, "reduction_factor": 2, "seed": 3},
}


def write_sweep(tmp_path, train=None, space=None, **sweep):
    cfg = json.loads(json.dumps(SWEEP))
    cfg["sweep"].update(sweep)
    cfg["train"].update(train or {})
    cfg["search"].update(space or {})
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def tune_cmd(cfg, tmp_path, name, *extra):
    return [sys.executable, str(ROOT / "tune_main.py"), "--config", str(cfg), "--experiment-name", name,
            "--storage-path", str(tmp_path / "store"), "--no-dashboard", *extra]


def results_by_trial(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for f in exp.glob("trial_*/result.json"):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def trial_statuses(exp: Path) -> dict[str, str]:
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        state = json.loads(Path(files[-1]).read_text())
    except json.JSONDecodeError:  # being rewritten
        return {}
    return {json.loads(t[0])["trial_id"]: json.loads(t[0])["status"] for t in state["trial_data"]}


def records(exp: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in exp.glob("configs/*/member.json")}


def record_times(exp: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in exp.glob("configs/*/member.json")}


def finished_pack_configs(exp: Path) -> set[str]:
    """Configurations of the packs the saved experiment state records as TERMINATED: never trained again. (One that
    left a running pack after the pack's last saved checkpoint is trained again, to the same result.)"""
    done = {t for t, st in trial_statuses(exp).items() if st == "TERMINATED"}
    return {r["config_id"] for r in records(exp).values() if r["pack_id"] in done}


def same_result(a: dict, b: dict) -> bool:
    keys = ("outcome", "episodes", "val_sharpe", "val_return", "evaluations", "params")
    return all(a[k] == b[k] for k in keys)


@pytest.mark.slow
def test_packed_sweep_asha_optuna_retry_and_results(tmp_path):
    cfg = write_sweep(tmp_path, search="optuna", pack=4, tell_stopped="pruned", rung_window=2)
    marker = tmp_path / "fail"
    marker.mkdir()
    cmd = tune_cmd(cfg, tmp_path, "asha")
    cmd[1:2] = [str(ROOT / "tests" / "crash_once_sweep.py"), str(marker), "3"]  # the real trainable, wrapped
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (marker / "failed").exists()  # the injected crash happened
    exp = tmp_path / "store" / "asha"
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    # one row per configuration, trained in two packs of four
    assert len(rows) == 8 and all(r["status"] == "TERMINATED" for r in rows)
    assert sorted(r["config_id"] for r in rows) == [f"c{i:04d}" for i in range(8)]
    packs = {}
    for r in rows:
        packs.setdefault(r["pack_id"], []).append(r["config_id"])
    assert sorted(map(len, packs.values())) == [4, 4]
    # ASHA stopped configurations inside their packs, at its rungs (1, 2, 4 episodes)
    stopped = [r for r in rows if r["stopped_by_asha"] == "True"]
    assert stopped and all(int(r["episodes"]) in (1, 2, 4) for r in stopped)
    full = [r for r in rows if r["full_budget"] == "True"]
    assert full and all(int(r["episodes"]) == 6 for r in full) and len(full) + len(stopped) == 8
    table = json.loads((exp / "rungs.json").read_text())["rungs"]
    for r in stopped:  # stopped where the table says, below a value recorded at that rung before
        rung = table[r["episodes"]]
        assert rung["decisions"][r["config_id"]] is True
        assert rung["recorded"][r["config_id"]] < max(rung["recorded"].values())
        assert all(r["config_id"] not in table[m]["recorded"] for m in table if int(m) > int(r["episodes"]))
    # ... and the pack's compute shrank: fewer configurations stepped in its later episodes
    results = results_by_trial(exp)
    shrinking = [[x["configs_active"] for x in v] for v in results.values()]
    assert any(s[-1] < s[0] for s in shrinking) and all(s == sorted(s, reverse=True) for s in shrinking)
    # the crashed pack was retried from its episode-2 checkpoint: its first result after the restore is episode 3
    # (iterations_since_restore starts again at 1 there), and episode 1 was not trained again. Whether the result
    # reported just before the crash reached Tune is a race, so episode 3 may be recorded once or twice.
    restarts = {t: [x["episodes"] for x in v if x.get("iterations_since_restore") == 1] for t, v in results.items()}
    retried = [t for t, eps in restarts.items() if eps[1:]]
    assert len(retried) == 1 and restarts[retried[0]] == [1, 3], restarts
    seq = [x["episodes"] for x in results[retried[0]]]
    assert seq.count(1) == 1 and seq[:3] == [1, 2, 3] and seq[-1] == max(seq)
    # Optuna was told each configuration's own result: complete at full budget, pruned when ASHA stopped it, with
    # its rung values (mean of its last 2 validation values) as intermediate values
    recs = records(exp)
    (state_file,) = exp.glob("searcher-state-*.pkl")
    searcher = pickle.loads(state_file.read_bytes())
    study = searcher["study"]
    assert len(study.trials) == 8
    for cid, rec in recs.items():
        trial = study.trials[searcher["configs"][cid]["trial"].number]
        assert trial.params == rec["params"]
        evals = rec["evaluations"]
        want = {e: float(np.mean(evals[max(0, e - 2):e])) for e in range(1, rec["episodes"] + 1)}
        assert trial.intermediate_values == pytest.approx(want)
        if rec["outcome"] == "finished":
            assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(rec["val_sharpe"])
        else:
            assert rec["outcome"] == "stopped" and trial.state.name == "PRUNED"
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["n_trials"] == 8 and summary["n_packs"] == 2 and summary["n_stopped_by_asha"] == len(stopped)
    assert summary["best_trial"] in {r["config_id"] for r in full}
    assert 0.0 <= summary["deflated_sharpe"]["dsr"] <= 1.0 and summary["deflated_sharpe"]["n_trials"] == 8
    assert summary["test"]["part"] == "test" and "buy_and_hold" in summary["test"]["baselines"]
    # the verdict (issue 11): every trial kept its last validation returns, ASHA-stopped ones included, so the
    # search check ranks all 8 columns
    from dqlray.tuning.validation import validation_matrix

    v = summary["verdict"]
    assert v["benchmark"] == "buy_and_hold" and v["n_trials"] == 8 and 0 <= v["pbo"] <= 1 and 0 <= v["dsr_active"] <= 1
    assert v["beats_benchmark"] == (v["p_benchmark"] <= 0.05 and v["p_random"] <= 0.05)
    vm = validation_matrix(exp, [r["config_id"] for r in rows])
    assert vm.returns.shape[1:] == (8, 1) and vm.missing == [] and vm.returns.shape[0] > 300
    assert f"Verdict: {v['statement']}" in proc.stdout and "more likely skilled" not in proc.stdout
    assert "Detail, not the verdict: deflated Sharpe ratio against a Sharpe of zero" in proc.stdout
    assert "linear_probe" in summary["test"]["baselines"]
    # each configuration keeps its validation returns, one column per seed, over the validation bars
    val = np.load(exp / "configs" / summary["best_trial"] / "val_returns.npy")
    assert val.shape[1] == 1 and val.shape[0] > 100 and np.isfinite(val).all()
    # the best config retrains with the single-run command
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert best["agent"]["learning_rate"] == pytest.approx(summary["best_params"]["agent.learning_rate"])
    again = subprocess.run([sys.executable, str(ROOT / "train_single.py"), "--config", str(exp / "best_config.yaml"),
                            "--results_dir", str(tmp_path / "retrain")], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert (tmp_path / "retrain" / best["train"]["experiment_name"] / "eval.json").exists()
    # consolidate gathers it
    cons = subprocess.run([sys.executable, "-m", "dqlray", "consolidate", "--results_dir", str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=120)
    assert cons.returncode == 0 and "asha" in cons.stdout, cons.stderr
    assert f"asha: {v['statement']}" in cons.stdout


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", [False, True])
def test_a_packed_configuration_equals_its_run_alone(tmp_path, ensemble):
    from dqlray.config import build_config
    from dqlray.data import load_ohlcv
    from dqlray.trainer import train
    from dqlray.tuning.space import trial_config

    # widths and batch sizes differ inside the pack: padded and masked; each keeps its best validation checkpoint
    # (with train.ensemble each is validated and tested as its seeds' ensemble, as alone: issue 12)
    cfg = write_sweep(tmp_path, train={"episodes": 3, "num_seeds": 2, "select": "best_val_sharpe", "ensemble": ensemble},
                      scheduler="none", num_samples=3, pack=3, space={"agent.batch_size": {"choice": [8, 16]},
                                                                     "agent.hidden": {"choice": [[8, 8], [16, 16]]}})
    proc = subprocess.run(tune_cmd(cfg, tmp_path, "eq"), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / "store" / "eq"
    recs = records(exp)
    assert len(recs) == 3 and len({r["pack_id"] for r in recs.values()}) == 1
    base = build_config(json.loads((exp / "sweep_meta.json").read_text())["base_config"])
    data = load_ohlcv(base.data.data_file)
    for cid, rec in recs.items():
        alone = train(trial_config(base, rec["params"]), data, progress=False)
        state = torch.load(exp / "configs" / cid / "checkpoint" / "state.pt", weights_only=False)
        for key, mine in (("online", alone.learner.net.flat), ("target", alone.learner.target_flat)):
            assert torch.allclose(state["learner"][key], mine, rtol=1e-4, atol=1e-6), (cid, key)
        assert rec["episodes"] == 3 and rec["outcome"] == "finished"
        # ranked by the evaluation its checkpoint was chosen at (train.select), the same one as alone
        assert rec["selected_episode"] == alone.member.selected["episodes"]
        assert rec["val_sharpe"] == pytest.approx(alone.member.selected["val"]["val_sharpe"], rel=1e-4, abs=1e-6)
        assert rec["evaluations"] == pytest.approx([e["val_sharpe"] for e in alone.member.evaluations], rel=1e-4,
                                                   abs=1e-6)
        chosen = torch.load(exp / "configs" / cid / "selected" / "state.pt", weights_only=False)
        assert torch.allclose(chosen["learner"]["online"], alone.kept_learner().net.flat, rtol=1e-4, atol=1e-6)
        # (bars, seeds), or one column: the ensemble is one policy
        assert np.load(exp / "configs" / cid / "val_returns.npy").shape[1] == (1 if ensemble else 2)
        assert (exp / "configs" / cid / "val_returns_last.npy").exists()
    # the deflated Sharpe counts every evaluation the selection chose among, and the winner's chosen checkpoint
    # was the one evaluated on test
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["n_candidates"] == 9 and summary["deflated_sharpe"]["n_trials"] == 9
    assert summary["verdict"]["n_trials"] == 9  # the verdict's search check counts them too
    assert summary["selected_episode"] == recs[summary["best_trial"]]["selected_episode"]
    assert "best of 9 checkpoints (3 configurations" in proc.stdout
    assert summary["test"]["policy"] == ("ensemble" if ensemble else "seeds")
    assert len(summary["test"]["agent"]["per_seed"]) == (1 if ensemble else 2)


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_configurations(tmp_path):
    cfg = write_sweep(tmp_path, search="grid", max_concurrent=1, pack=2)
    exp = tmp_path / "store" / "grid"
    p = subprocess.Popen(tune_cmd(cfg, tmp_path, "grid"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 300
    finished = set()
    while time.time() < deadline and p.poll() is None:
        finished = {k for k, v in trial_statuses(exp).items() if v == "TERMINATED"}
        if finished:
            break
        time.sleep(0.2)
    assert p.poll() is None, "the sweep ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)  # the driver and the local Ray it started
    p.wait()
    before = {k: len(v) for k, v in results_by_trial(exp).items()}
    done_before = {f"trial_{t}" for t in finished}
    times_before, recs_before, kept = record_times(exp), records(exp), finished_pack_configs(exp)
    rungs_before = json.loads((exp / "rungs.json").read_text())["rungs"]
    assert done_before and len(kept) >= 2
    proc = subprocess.run(tune_cmd(cfg, tmp_path, "grid", "--resume"), capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = results_by_trial(exp)
    for t in done_before:  # no finished pack ran again
        assert len(after[t]) == before[t], t
    times_after, recs_after = record_times(exp), records(exp)
    for cid in kept:  # no configuration of a finished pack was trained and written again
        assert times_after[cid] == times_before[cid], cid
    for cid, rec in recs_before.items():  # and any that was, came out the same
        assert same_result(rec, recs_after[cid]), cid
    rungs_after = json.loads((exp / "rungs.json").read_text())["rungs"]
    for m, rung in rungs_before.items():  # the rung table survived the kill
        assert rung["recorded"].items() <= rungs_after[m]["recorded"].items()
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)
    assert (exp / "summary.json").exists()


def test_bad_sweep_file_is_one_line(tmp_path):
    cfg = write_sweep(tmp_path)
    text = cfg.read_text().replace("agent.gamma:", "agent.gama:")
    cfg.write_text(text)
    proc = subprocess.run(tune_cmd(cfg, tmp_path, "bad"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"tune_main.py: error: {cfg}: search key 'agent.gama' is not a config field "
                                   "(use section.field, e.g. agent.learning_rate)")
    bad = subprocess.run(tune_cmd(write_sweep(tmp_path), tmp_path, "bad", "--pack", "0"), capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "tune_main.py: error: argument --pack: --pack '0': auto or an integer >= 1"


@pytest.mark.slow
def test_sigusr1_saves_state_exits_75_and_resumes_with_its_own_settings(tmp_path):
    # The settings come from flags, not the file (which says 6 episodes, random search, 8 samples, pack auto): a
    # plain `--resume --experiment-name` must bring them all back (issue 13, item 1), and a packed sweep resumes
    # without training its finished configurations again (issue 14).
    cfg = write_sweep(tmp_path)
    exp = tmp_path / "store" / "usr1"
    flags = ["--episodes", "80", "--search", "grid", "--max-concurrent", "1", "--pack", "2"]
    p = subprocess.Popen(tune_cmd(cfg, tmp_path, "usr1", *flags), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if len(records(exp)) >= 2:
            break  # the first pack is done, the second starting
        time.sleep(0.1)
    p.send_signal(signal.SIGUSR1)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 75, out[-3000:]
    assert "Resume with: python tune_main.py --resume --experiment-name usr1" in out
    assert not (exp / "summary.json").exists()
    meta_before = json.loads((exp / "sweep_meta.json").read_text())
    times_before, recs_before, kept = record_times(exp), records(exp), finished_pack_configs(exp)
    assert len(kept) >= 2
    bare = [sys.executable, str(ROOT / "tune_main.py"), "--resume", "--experiment-name", "usr1",
            "--storage-path", str(tmp_path / "store"), "--no-dashboard"]
    # a flag that contradicts the stored setting is refused, naming both values, and changes nothing
    for flag, value, shown in (("--episodes", "6", "train.episodes=6"), ("--pack", "1", "sweep.pack=1")):
        bad = subprocess.run([*bare, flag, value], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-2000:]
        assert bad.stderr.count("\n") == 1 and shown in bad.stderr, bad.stderr
    assert json.loads((exp / "sweep_meta.json").read_text()) == meta_before
    # the same value again is fine; so is a new placement setting
    proc = subprocess.run([*bare, "--episodes", "80", "--max-concurrent", "2"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (exp / "summary.json").exists()
    rows = list(csv.DictReader((exp / "trials.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)  # the 2 x 2 grid, not 8 samples
    assert len({r["pack_id"] for r in rows}) == 2  # --pack 2 came back: two packs of two
    assert max(int(r["episodes"]) for r in rows) == 80
    times_after, recs_after = record_times(exp), records(exp)
    for cid in kept:  # in a pack finished before the signal: not trained again
        assert times_after[cid] == times_before[cid], cid
    for cid, rec in recs_before.items():
        assert same_result(rec, recs_after[cid]), cid
    meta = json.loads((exp / "sweep_meta.json").read_text())
    assert meta["base_config"] == meta_before["base_config"] and meta["sweep"]["search"] == "grid"
    assert meta["sweep"]["pack"] == 2 and meta["resumed"][-1]["max_concurrent"] == 2


def test_asha_rungs_must_fall_on_evaluations(tmp_path):
    from dqlray.errors import ConfigError
    from dqlray.tuning.space import parse_sweep_file

    # rungs at 1, 2, 4 episodes (grace 1, factor 2, 6 episodes): an evaluation every 2 episodes would let rung 1 pass
    # unjudged, since ASHA decides a rung on the value measured there
    with pytest.raises(ConfigError, match=r"train.eval_every=2 does not evaluate at ASHA's rung episode\(s\) 1: "):
        parse_sweep_file(write_sweep(tmp_path, train={"eval_every": 2}))
    assert parse_sweep_file(write_sweep(tmp_path, train={"eval_every": 2}, grace_period=2)).base.train.eval_every == 2
    assert parse_sweep_file(write_sweep(tmp_path, train={"eval_every": 2}, scheduler="none")).sweep.scheduler == "none"


def test_tune_settings_last_for_one_fit_and_keep_what_the_user_set(monkeypatch):
    from dqlray.tuning.sweep import tune_settings

    pending, warn = "TUNE_MAX_PENDING_TRIALS_PG", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
    monkeypatch.delenv(pending, raising=False)
    monkeypatch.setenv(warn, "7")  # the user's own
    with tune_settings(3):
        assert os.environ[pending] == "3" and os.environ[warn] == "7"
    assert pending not in os.environ and os.environ[warn] == "7"  # a second sweep in this process starts clean
