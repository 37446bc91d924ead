"""The verdict wired in (issue 11): computed in one place from the saved test series and shown the same way in
eval.json, the terminal, the report, Telegram, consolidate and compare; its settings a config section; every trial's
validation returns read back through one function; walk-forward folds from the config."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dqlray.cli import main
from dqlray.config import ExperimentConfig, flat_to_nested, load_config
from dqlray.data import load_ohlcv, save_ohlcv, synth_market
from dqlray.errors import ConfigError, DataError, DqlrayError
from dqlray.evaluation import evaluate_policy
from dqlray.notify import messages
from dqlray.parts import build_market, fold_splits
from dqlray.record import RECORD_FILE, load_record, record_of, results_of, save_record, stitch
from dqlray.verdict import SEARCH_KEYS, message_parts, record_verdict, run_dict

FAST = {"n_boot": 199, "n_null": 199}


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """A market whose strong drift no agent that is ever out of it can match (buy-and-hold wins on test)."""
    path = tmp_path_factory.mktemp("data") / "drift.csv"
    save_ohlcv(synth_market(900, seed=2, drift=0.003), path)
    return path


@pytest.fixture(scope="module")
def trailing_run(drifting, tmp_path_factory):
    """A real single run through the command line: a little training, evaluated once on test; and its output."""
    results = tmp_path_factory.mktemp("results")
    args = ["train", "--data_file", str(drifting), "--episodes", "2", "--num_seeds", "2", "--no-progress",
            "--results_dir", str(results), "--experiment_name", "trail", "--set", "env.episode_length=60",
            "--set", "agent.learning_starts=30", "--set", "verdict.n_boot=199", "--set", "verdict.n_null=199"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    return results / "trail", buf.getvalue()


def test_a_run_that_trails_buy_and_hold_says_so_first_everywhere(trailing_run):
    run_dir, shown = trailing_run
    ev = json.loads((run_dir / "eval.json").read_text())
    v = ev["verdict"]
    assert ev["agent"]["summary"]["sharpe"]["mean"] < ev["baselines"]["buy_and_hold"]["sharpe"]
    assert v["beats_benchmark"] is False
    assert v["statement"].startswith("The agent does not beat buy-and-hold: information ratio ")
    # a single run's verdict has no search check
    assert not set(SEARCH_KEYS) & set(v) and {"benchmark", "info_ratio", "info_ratio_ci", "p_benchmark",
                                                 "p_random", "statement", "level"} <= set(v)
    # the terminal shows the same sentence; nothing claims skill
    assert f"Verdict: {v['statement']}" in shown and "skilled" not in shown
    # one place: the verdict recomputed from the saved exact test series is the same
    cfg = load_config(run_dir / "config.yaml")
    rec = load_record(run_dir / RECORD_FILE)
    assert run_dict(record_verdict(rec, cfg.verdict, periods=cfg.train.periods_per_year)) == v
    # Telegram: the same sentence and figures, buy-and-hold's metrics next to the agent's
    parts = message_parts(ev, v)
    text = messages.run_finished("trail", final_reward=None, test_metrics={"sharpe": 0.1}, model_path=None, **parts)
    assert messages.esc(v["statement"]) in text and "beats buy-and-hold: no" in text
    assert "p vs random timing: " in text and "buy&amp;hold" in text


def test_report_consolidate_and_compare_show_the_verdict(trailing_run, tmp_path, capsys):
    from dqlray.report import build_comparison_report, build_report

    run_dir, _ = trailing_run
    v = json.loads((run_dir / "eval.json").read_text())["verdict"]
    html = build_report(run_dir).html.read_text()
    # the statement in a warning note, not a bold claim next to a red "vs buy & hold"
    assert f'data-note="warn"><strong>Does not beat buy-and-hold.</strong> {v["statement"]}' in html
    assert "skilled" not in html
    assert main(["consolidate", "--results_dir", str(run_dir.parent)]) == 0
    out = capsys.readouterr().out
    assert "does not beat buy-and-hold" in out and f"trail: {v['statement']}" in out
    cmp = build_comparison_report([run_dir], tmp_path / "c.html").html.read_text()
    assert "does not beat buy-and-hold" in cmp and v["statement"] in cmp


def test_benchmark_flag_chooses_another_baseline(drifting, tmp_path, capsys):
    args = ["train", "--data_file", str(drifting), "--episodes", "1", "--num_seeds", "1", "--no-progress",
            "--results_dir", str(tmp_path), "--experiment_name", "mom", "--benchmark", "momentum",
            "--set", "env.episode_length=60", "--set", "agent.learning_starts=30", "--set", "verdict.n_boot=199",
            "--set", "verdict.n_null=199"]
    assert main(args) == 0
    v = json.loads((tmp_path / "mom" / "eval.json").read_text())["verdict"]
    assert v["benchmark"] == "momentum" and " momentum" in v["statement"].split(":")[0]
    assert yaml.safe_load((tmp_path / "mom" / "config.yaml").read_text())["verdict"]["benchmark"] == "momentum"
    capsys.readouterr()
    assert main([*args[:-10], "--benchmark", "buy_hold"]) == 2
    assert "verdict.benchmark='buy_hold' is not allowed: one of buy_and_hold" in capsys.readouterr().err


def test_planted_edge_record_beats_buy_and_hold():
    class FollowLastBar:
        def __init__(self, market):
            self.market = market

        def predict(self, obs):
            return (self.market.raw_feature("ret_1", obs) > 0).astype(np.int64)

    cfg = ExperimentConfig().replace({"verdict": FAST})
    data = synth_market(2500, seed=0, ar=0.5)
    m = build_market(cfg, data)
    results = {"agent": evaluate_policy(FollowLastBar(m), m, part="test", env=cfg.env, name="agent")}
    from dqlray.baselines import make_baselines

    for name, pol in make_baselines(m, cfg.env).items():
        results[name] = evaluate_policy(pol, m, part="test", env=cfg.env, name=name)
    rec = record_of(results, m, cfg.env.cost_rate)
    v = record_verdict(rec, cfg.verdict, periods=252)
    assert v.beats_benchmark is True and v.statement.startswith("The agent beats buy-and-hold out of sample")


def test_verdict_is_a_config_section_with_one_home_for_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("verdict:\n  level: 0.01\n  benchmark: ma_crossover\n")
    cfg = load_config(f)
    assert cfg.verdict.level == 0.01 and cfg.verdict.benchmark == "ma_crossover" and cfg.verdict.n_boot == 2000
    assert cfg.to_dict()["verdict"]["resample_seed"] == 0
    assert flat_to_nested({"benchmark": "momentum", "seed": 3}) == {"verdict": {"benchmark": "momentum"},
                                                                     "train": {"seed": 3}}
    f.write_text("verdict:\n  levels: 0.01\n")
    with pytest.raises(ConfigError, match=r"unknown key verdict.levels; allowed: benchmark, level"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"verdict.level=0.7 is not allowed: a number in \(0, 0.5\)"):
        load_config(None, {"verdict": {"level": 0.7}})


# ------------------------------------------------------------------------------------- validation returns


def _val_file(exp, cid, returns, times):
    from dqlray.tuning.members import member_dir
    from dqlray.tuning.validation import TIME_FILE, VAL_FILE

    d = member_dir(exp, cid)
    d.mkdir(parents=True)
    np.save(d / VAL_FILE, returns.T)
    np.save(d / TIME_FILE, times[1:].astype("datetime64[ns]").astype(np.int64))


def test_validation_matrix_contract(tmp_path):
    from dqlray.tuning.validation import VAL_FILE, validation_matrix
    from dqlray.verdict import trial_information_ratios

    times = np.arange("2020-01-01", "2020-01-12", dtype="datetime64[D]").astype("datetime64[ns]")
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(0, 0.01, (2, 10)) for _ in range(3))
    _val_file(tmp_path, "a", a, times)
    _val_file(tmp_path, "b", b, times)
    _val_file(tmp_path, "c", c[:, 2:], times[2:])  # a searched window: its validation starts 2 bars later
    vm = validation_matrix(tmp_path, ["c", "zz", "a", "b"])
    assert vm.config_ids == ["c", "a", "b"] and vm.missing == ["zz"]
    assert vm.returns.shape == (8, 3, 2) and list(vm.time) == list(times[3:])
    assert np.allclose(vm.returns[:, 1, :], a[:, 2:].T) and np.allclose(vm.returns[:, 0, :], c[:, 2:].T)
    # a search over train.num_seeds (or train.ensemble: one column): each configuration keeps its own seed average
    _val_file(tmp_path, "d", a[:1], times)
    _val_file(tmp_path, "f", rng.normal(0, 0.01, (3, 10)), times)
    vm = validation_matrix(tmp_path, ["a", "d", "f"])
    assert vm.returns.shape == (10, 3, 6)  # 2, 1 and 3 seeds: each repeated up to 6 columns
    for j, cid in enumerate(["a", "d", "f"]):
        own = np.load(tmp_path / "configs" / cid / VAL_FILE)
        assert np.allclose(vm.returns[:, j, :].mean(axis=1), own.mean(axis=1))
        assert trial_information_ratios(vm.returns)[j] == pytest.approx(trial_information_ratios(own[:, None, :])[0])
    for cid, k in (("g", 7), ("h", 8), ("i", 9), ("j", 5)):
        _val_file(tmp_path, cid, rng.normal(0, 0.01, (k, 10)), times)
    with pytest.raises(DqlrayError, match=r"seed counts \[5, 7, 8, 9\] .* search train.num_seeds over fewer values"):
        validation_matrix(tmp_path, ["g", "h", "i", "j"])
    (tmp_path / "configs" / "e").mkdir()
    (tmp_path / "configs" / "e" / VAL_FILE).write_text("cut")
    with pytest.raises(DqlrayError, match=r"configs/e/val_returns.npy: unreadable validation returns"):
        validation_matrix(tmp_path, ["e"])


def test_search_record_aligns_the_benchmark_and_finds_the_winner(tmp_path):
    from dqlray.baselines import make_baselines
    from dqlray.tuning.validation import search_record

    cfg = ExperimentConfig()
    market = build_market(cfg, synth_market(1500, seed=2))
    a, b = market.part("val")
    times = np.asarray(market.data.time[a:b], dtype="datetime64[ns]")
    rng = np.random.default_rng(1)
    t = b - a - 1
    full, late = rng.normal(0, 0.01, (2, t)), rng.normal(0, 0.01, (2, t - 3))
    _val_file(tmp_path, "c0000", full, times)
    _val_file(tmp_path, "c0001", late, times[3:])  # its validation starts 3 bars later
    rec = search_record(tmp_path, ["c0000", "c0001", "c0002"], "c0001", market, cfg, n_trials=7)
    assert rec.winner == 1 and rec.n_trials == 7 and rec.val_returns.shape == (t - 3, 2, 2)
    assert np.allclose(rec.val_returns[:, 1, :], late.T) and np.allclose(rec.val_returns[:, 0, :], full[:, 3:].T)
    bench = evaluate_policy(make_baselines(market, cfg.env, seed=cfg.train.seed)["buy_and_hold"], market, part="val",
                            env=cfg.env)
    assert np.allclose(rec.val_benchmark_returns, bench.returns[0][3:])  # the benchmark on the same bars
    assert search_record(tmp_path, ["c0000", "c0001"], "c0001", market, cfg).n_trials == 2
    assert search_record(tmp_path, ["c0000", "c0002"], "c0002", market, cfg) is None  # no returns kept: no check 3


# ------------------------------------------------------------------------------------------------ folds, stitching


def test_walk_forward_folds_from_the_config():
    data = synth_market(5000, seed=1)
    cfg = ExperimentConfig().replace({"data": {"walk_forward": 3}})
    folds = fold_splits(cfg, data)
    embargo = 57  # the 50-bar feature warm-up + window 8 - 1
    s = folds[0].test[1] - folds[0].test[0]
    assert folds[-1].test[1] == 5000 and s == folds[0].val[1] - folds[0].val[0] >= 400
    for k, f in enumerate(folds):
        assert f.train[0] == 57 and f.val[0] - f.train[1] == embargo and f.test[0] - f.val[1] == embargo
        if k:
            assert f.test[0] == folds[k - 1].test[1] and f.train[1] > folds[k - 1].train[1]  # expanding, contiguous
    assert folds[0].train[1] >= 57 + round(0.6 * (5000 - 57))
    m = build_market(cfg.replace({"data": {"fold": 1}}), data)
    assert m.split == folds[1]
    with pytest.raises(ConfigError, match="data.walk_forward=3 without data.fold"):
        build_market(cfg, data)
    with pytest.raises(ConfigError, match=r"data.fold=3 is not allowed: null or a fold 0 .. 2"):
        cfg.replace({"data": {"fold": 3}})
    with pytest.raises(DataError, match=r"too few rows for 3 walk-forward folds: 600 rows"):
        fold_splits(cfg, synth_market(600, seed=1))
    dated = cfg.replace({"data": {"train": "2010-01-01", "val": "2012-01-01", "embargo": 0}})
    f0 = fold_splits(dated, data)[0]
    assert str(data.time[f0.train[1]])[:10] >= "2010-01-01" and f0.val[0] == f0.train[1]


def test_stitched_record_keeps_bars_segments_and_roundtrips(tmp_path):
    cfg = ExperimentConfig().replace({"data": {"walk_forward": 2}, "verdict": FAST})
    data = synth_market(1500, seed=3)
    recs = []
    from dqlray.baselines import make_baselines

    for fold in (0, 1):
        m = build_market(cfg.replace({"data": {"fold": fold}}), data)
        res = {n: evaluate_policy(p, m, part="test", env=cfg.env, name=n)
               for n, p in make_baselines(m, cfg.env).items()}
        res = {"agent": res["momentum"], **res}
        recs.append(record_of(res, m, cfg.env.cost_rate))
    rec = stitch(recs)
    assert rec.segments == (0, recs[0].bars) and rec.bars == recs[0].bars + recs[1].bars
    assert len(rec.time) == rec.bars + 1 and rec.time[recs[0].bars + 1] == recs[1].time[1]
    save_record(tmp_path / "r.npz", rec)
    back = load_record(tmp_path / "r.npz")
    assert back.segments == rec.segments and np.array_equal(back.time, rec.time)
    assert all(np.array_equal(back.policies[n].returns, rec.policies[n].returns) for n in rec.policies)
    v = record_verdict(back, cfg.verdict, periods=252)
    assert v.folds == 2 and v.statement.startswith("The walk-forward agent (2 folds) ")
    eq = results_of(rec, "test", 252)["buy_and_hold"].equity[0]
    assert eq[-1] == pytest.approx(np.prod(1 + rec.policies["buy_and_hold"].returns[0]))
    with pytest.raises(DqlrayError, match="fold 1: its test bars start before fold 0's end"):
        stitch([recs[1], recs[0]])
    with pytest.raises(DqlrayError, match=r"r2.npz: missing"):
        load_record(tmp_path / "r2.npz")


def test_a_walk_forward_file_of_5000_daily_bars_completes(tmp_path, capsys):
    path = tmp_path / "daily.csv"
    save_ohlcv(synth_market(5000, seed=7), path)
    assert len(load_ohlcv(path)) == 5000
    args = ["train", "--data_file", str(path), "--walk-forward", "3", "--episodes", "1", "--num_seeds", "1",
            "--no-progress", "--results_dir", str(tmp_path), "--experiment_name", "wf5k", "--set",
            "env.episode_length=50", "--set", "agent.learning_starts=20", "--set", "verdict.n_boot=199",
            "--set", "verdict.n_null=199"]
    assert main(args) == 0
    s = json.loads((tmp_path / "wf5k" / "summary.json").read_text())
    assert s["kind"] == "walk_forward" and s["n_folds"] == 3 and len(s["segments"]) == 3
    assert s["verdict"]["folds"] == 3 and s["verdict"]["bars"] == sum(f["test"]["bars"][1] - f["test"]["bars"][0] - 1
                                                                      for f in s["folds"])
    assert [f["dir"] for f in s["folds"]] == ["fold_0", "fold_1", "fold_2"]
    assert all((tmp_path / "wf5k" / f"fold_{i}" / "eval.json").exists() for i in range(3))
    out = capsys.readouterr().out
    assert f"Verdict: {s['verdict']['statement']}" in out


def test_fold_flag_needs_walk_forward_and_an_experiment_name(tmp_path, capsys):
    assert main(["train", "--fold", "1", "--results_dir", str(tmp_path)]) == 2
    assert "--fold 1: only with --walk-forward N" in capsys.readouterr().err
    root = Path(__file__).resolve().parents[1]

    def tune(*args):
        return subprocess.run([sys.executable, str(root / "tune_main.py"), "--storage-path", str(tmp_path), *args],
                              cwd=root, capture_output=True, text=True, timeout=120)

    p = tune("--fold", "1", "--experiment-name", "x")
    assert p.returncode == 2 and "--fold 1: only with --walk-forward N" in p.stderr
    p = tune("--fold", "1", "--walk-forward", "3")
    assert p.returncode == 2 and "--fold needs --experiment-name" in p.stderr
    assert main(["train", "--walk-forward", "3", "--fold", "5", "--results_dir", str(tmp_path),
                 "--experiment_name", "w"]) == 2
    assert "--fold 5: the experiment has folds 0 .. 2" in capsys.readouterr().err
