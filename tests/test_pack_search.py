"""The sweep's pieces for packed trials (issue 14), without a cluster: the rung table decides as Ray's ASHA does, the
searcher forms packs whose members can share one and tells Optuna each configuration's own result, and the pack
sizes the default search space gives."""

import dataclasses
import json
import pickle

import numpy as np
import pytest

from dqlray.pack import pack_cost, pack_key, pack_problem
from dqlray.tuning.rungs import RungServer, RungTable, budget_share, milestones
from dqlray.tuning.search import PackSearcher
from dqlray.tuning.space import auto_pack_size, parse_sweep_file, trial_config


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # Ray's, at a rung that holds only NaN
@pytest.mark.parametrize(("grace", "rf", "max_t"), [(1, 2, 6), (4, 3, 24), (3, 3, 27), (2, 4, 40)])
def test_rung_table_decides_as_rays_asha(grace, rf, max_t):
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(grace, max_t, rf, 0)
    assert sorted(m for m, _ in bracket._rungs) == milestones(grace, rf, max_t)
    table = RungTable(grace, rf, max_t)
    rng = np.random.default_rng(grace * 100 + rf)
    members = [f"c{i:04d}" for i in range(40)]
    alive = set(members)
    for t in range(1, max_t + 1):  # members report in a random order each episode, as trials do
        for m in rng.permutation(sorted(alive)):
            value = float(rng.normal()) if rng.random() > 0.05 else float("nan")
            theirs = bracket.on_result(_Trial(m), t, value) == "STOP"
            mine = table.decide(m, t, value) if t in table.rungs else False
            assert mine == theirs, (m, t)
            if mine:
                alive.discard(m)
    assert 0 < len(alive) < len(members)


def test_rung_table_answers_a_retried_pack_the_same_and_survives_a_restart(tmp_path):
    path = tmp_path / "rungs.json"
    server = RungServer(str(path), 1, 2, 8)
    first = server.decide_many([("a", 1, 0.5), ("b", 1, 0.1), ("c", 1, 0.9), ("d", 1, 0.2)])
    assert first == [False, True, False, True]  # a first: never stopped; then each against those before it
    # a pack retried from a checkpoint asks again: the same answers, nothing recorded twice
    assert server.decide_many([("b", 1, 0.7), ("d", 1, 0.95)]) == [True, True]
    # the driver restarts (a resumed sweep): the saved table carries on
    again = RungServer(str(path), 1, 2, 8)
    assert again.table.recorded == server.table.recorded
    assert again.decide_many([("e", 1, 0.3), ("a", 2, 0.1), ("c", 2, 0.2)]) == [True, False, False]
    assert json.loads(path.read_text())["rungs"]["2"]["recorded"] == {"a": 0.1, "c": 0.2}
    # other ASHA settings: a new table
    assert RungServer(str(path), 2, 2, 8).table.recorded == {2: {}, 4: {}, 8: {}}


SPACE = {"agent.learning_rate": {"loguniform": [1e-4, 1e-2]},
         "agent.hidden": {"choice": [[16], [32, 32], [64, 64], [16, 16]]},
         "agent.batch_size": {"choice": [32, 128]},
         "agent.buffer_size": {"choice": [5000, 20000]}}


def _sweep(tmp_path, search, space=SPACE, **extra):
    raw = {"train": {"episodes": 4, "num_seeds": 1},
           "search": space,
           "grid": {"agent.learning_rate": [1e-4, 1e-3], "agent.hidden": [[16], [32, 32], [64, 64]]},
           "sweep": {"search": search, "num_samples": 24, "seed": 5, **extra}}
    p = tmp_path / "sweep.yaml"
    p.write_text(json.dumps(raw))
    return parse_sweep_file(p)


@pytest.mark.parametrize("search", ["optuna", "random", "grid"])
def test_packs_share_group_keys_and_every_configuration_is_handed_out_once(tmp_path, search):
    sf = _sweep(tmp_path, search)
    s = PackSearcher(sf, pack_size=5, max_concurrent=2)
    packs = {}
    for i in range(100):
        got = s.suggest(f"t{i}")
        if got is None:  # both slots busy: finish one pack
            s.on_trial_complete(next(iter(s.live)), {})
            continue
        if got == "FINISHED":
            break
        packs[f"t{i}"] = got["pack"]
    n = 24 if search != "grid" else 6
    ids = [m["id"] for p in packs.values() for m in p]
    assert sorted(ids) == [f"c{i:04d}" for i in range(n)]
    for pack in packs.values():  # members agree on depth and buffer size (group keys); widths and batches may differ
        cfgs = [trial_config(sf.base, m["params"]) for m in pack]
        assert 1 <= len(pack) <= 5 and pack_problem(cfgs) is None
    keys = {pack_key(trial_config(sf.base, m["params"])) for p in packs.values() for m in p}
    assert len(keys) > 1  # the space has several groups


def test_optuna_is_told_each_configurations_own_result_and_state_is_saved(tmp_path):
    for tell_stopped, stopped_state, diverged_state in (("pruned", "PRUNED", "PRUNED"),
                                                        ("complete", "COMPLETE", "FAIL")):
        sf = _sweep(tmp_path, "optuna", {"agent.learning_rate": SPACE["agent.learning_rate"]}, num_samples=4,
                    tell_stopped=tell_stopped)
        s = PackSearcher(sf, pack_size=4, max_concurrent=1)
        pack = [m["id"] for m in s.suggest("t0")["pack"]]
        flat = {}
        for cid, v in zip(pack, (0.1, 0.2, 0.3, 0.4), strict=True):  # flattened, as Tune hands results to searchers
            flat.update({f"members/{cid}/episodes": 1, f"members/{cid}/status": "active",
                         f"members/{cid}/rung_value": v})
        s.on_trial_result("t0", flat)
        a, b, c, d = pack
        s.on_trial_result("t0", {"members": {
            a: {"episodes": 2, "status": "stopped", "rung_value": 0.15, "value": 0.15},
            b: {"episodes": 2, "status": "diverged"},
            c: {"episodes": 2, "status": "active", "rung_value": 0.5}}})
        saved = tmp_path / f"s_{tell_stopped}.pkl"
        s.save(str(saved))
        restored = PackSearcher(sf, pack_size=4, max_concurrent=1)
        restored.restore(str(saved))
        restored.on_trial_complete("t0", {"members": {c: {"episodes": 4, "status": "finished", "rung_value": 0.6,
                                                          "value": 0.61}}})  # d: its pack failed
        trials = {cid: restored.study.trials[restored.configs[cid]["trial"].number] for cid in pack}
        assert trials[a].state.name == stopped_state and trials[a].intermediate_values == {1: 0.1, 2: 0.15}
        if stopped_state == "COMPLETE":
            assert trials[a].value == 0.15
        assert trials[b].state.name == diverged_state
        assert trials[c].state.name == "COMPLETE" and trials[c].value == 0.61
        assert trials[c].intermediate_values == {1: 0.3, 2: 0.5, 4: 0.6}
        assert trials[d].state.name == "FAIL"
        assert restored.suggest("t1") == "FINISHED"
        pickle.dumps(restored)


def _all_packs(s, base):
    packs = []
    for i in range(40):
        got = s.suggest(f"t{i}")
        if got == "FINISHED":
            break
        packs.append([trial_config(base, x["params"]) for x in got["pack"]])
        s.on_trial_complete(f"t{i}", {})
    return packs


def test_the_default_space_packs_and_auto_sizes():
    sf = parse_sweep_file("configs/sweep.yaml")
    m = auto_pack_size(27, 2, gpu=False)
    s = PackSearcher(sf, pack_size=m, max_concurrent=2)
    packs = _all_packs(s, sf.base)
    sizes = [len(p) for p in packs]
    shapes = [sorted({(c.agent.hidden[0], c.agent.batch_size) for c in p}) for p in packs]
    print(f"default space, 27 configurations, 2 slots, --pack auto (up to {m}): packs of {sizes}, (width, batch) "
          f"{shapes}")
    assert m == 14 and sum(sizes) == 27 and all(pack_problem(p) is None for p in packs)
    # one group (the default space keeps group keys equal), one wave, cut where padding would cost more than a pack
    assert len({pack_key(c) for p in packs for c in p}) == 1 and len(s.configs) == 27
    costs = [pack_cost(p, s.member_share) for p in packs]
    assert costs == sorted(costs, reverse=True)  # the longest packs first
    # under ASHA (rungs at 4 and 12 of 24 episodes, reduction factor 3) an average configuration trains a third of
    # the budget while its pack runs on for the survivors: the same 27 draws make fewer, larger packs than at full
    # budget, where padding weighs more
    assert s.member_share == pytest.approx(1 / 3) and budget_share(4, 3, 4) == 1.0
    full_sf = dataclasses.replace(sf, sweep=dataclasses.replace(sf.sweep, scheduler="none"))
    full = PackSearcher(full_sf, pack_size=m, max_concurrent=2)
    full_packs = _all_packs(full, full_sf.base)
    assert full.member_share == 1.0
    assert sorted(c.to_dict()["agent"]["learning_rate"] for p in full_packs for c in p) == \
        sorted(c.to_dict()["agent"]["learning_rate"] for p in packs for c in p)  # the same configurations
    print(f"  the same at full budget: packs of {[len(p) for p in full_packs]}")
    assert len(packs) < len(full_packs)
    assert auto_pack_size(27, 1, gpu=False) == 16 and auto_pack_size(500, 1, gpu=True) == 256
    assert auto_pack_size(3, 8, gpu=False) == 1


def test_a_searcher_pickled_before_member_share_resumes_cutting_as_before():
    # Tune unpickles a resumed sweep's searcher without __init__: one saved before member_share existed cuts its
    # next waves as then (every member at the full budget)
    sf = parse_sweep_file("configs/sweep.yaml")
    old = PackSearcher(sf, pack_size=4, max_concurrent=2)
    state = {k: v for k, v in old.__dict__.items() if k != "member_share"}
    resumed = PackSearcher.__new__(PackSearcher)
    resumed.__dict__.update(pickle.loads(pickle.dumps(state)))
    assert resumed.member_share == 1.0 and old.member_share == pytest.approx(1 / 3)
    assert resumed.suggest("t0")["pack"]
