"""Values that pass the range checks but are nonsense (issue 13 item 7): NaN, infinity, costs beyond the portfolio."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dqlray.config import AgentConfig, EnvConfig, load_config
from dqlray.errors import ConfigError
from dqlray.tuning.space import SweepConfig, parse_sweep_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("section, field", [("agent", "learning_rate"), ("agent", "gamma"), ("agent", "tau"),
                                            ("agent", "reward_scale"), ("agent", "max_grad_norm"),
                                            ("agent", "eps_start"), ("env", "fee_bps"), ("env", "slippage_bps"),
                                            ("env", "ruin_fraction"), ("data", "train")])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused_naming_the_field(section, field, value):
    with pytest.raises(ConfigError, match=rf"^command line: {section}\.{field}={value!r} is not allowed: a finite number$"):
        load_config(overrides={section: {field: value}})


def test_yaml_infinity_and_overflow_are_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("agent:\n  learning_rate: .inf\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: agent\.learning_rate=inf is not allowed: a finite number"):
        load_config(p)
    p.write_text("env:\n  fee_bps: 1.0e+400\n")  # YAML (and Python) read this as infinity
    with pytest.raises(ConfigError, match=r"c\.yaml: env\.fee_bps=inf is not allowed: a finite number"):
        load_config(p)


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"agent\.learning_rate=nan is not allowed: a finite number"):
        AgentConfig(learning_rate=float("nan"))


def test_costs_of_a_whole_portfolio_are_refused():
    # A trade costs (fee + slippage) x traded notional: from short to long that is twice the portfolio.
    assert EnvConfig(fee_bps=9000, slippage_bps=500).fee_bps == 9000  # long_flat: 95% of the notional, allowed
    with pytest.raises(ConfigError, match=r"env\.fee_bps=9999\.0 is not allowed: fee_bps \+ slippage_bps < 10000 "
                                          r"with positions=long_flat"):
        load_config(overrides={"env": {"fee_bps": 9999, "slippage_bps": 1}})
    with pytest.raises(ConfigError, match=r"fee_bps \+ slippage_bps < 5000 with positions=long_short"):
        load_config(overrides={"env": {"fee_bps": 4000, "slippage_bps": 1000, "positions": "long_short"}})


@pytest.mark.parametrize("flag", ["inf", "1e400", "nan", "-inf"])
def test_learning_rate_inf_does_not_train(tmp_path, flag):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, str(ROOT / "train_single.py"), "--data_file", str(ROOT / "data" / "test_small.csv"),
                        f"--learning_rate={flag}", "--results_dir", str(tmp_path), "--episodes", "1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2, p.stdout[-2000:]
    assert p.stderr.strip().splitlines() == [
        f"dqlray: error: command line: agent.learning_rate={float(flag)!r} is not allowed: a finite number"]
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_sweep_bounds_and_settings_must_be_finite(tmp_path):
    p = tmp_path / "s.yaml"
    for spec, message in [
        ("{loguniform: [1.0e-5, .inf]}", r"search\.agent\.learning_rate: loguniform needs \[low, high\], finite numbers"),
        ("{uniform: [.nan, 0.1]}", r"search\.agent\.learning_rate: uniform needs \[low, high\], finite numbers"),
        ("{uniform: [a, 0.1]}", r"search\.agent\.learning_rate: uniform needs \[low, high\], finite numbers"),
        ("{choice: [0.001, .inf]}", r"search\.agent\.learning_rate: agent\.learning_rate=inf is not allowed: a finite"),
    ]:
        p.write_text(yaml.safe_dump({"sweep": {"search": "random"}}) + f"search:\n  agent.learning_rate: {spec}\n")
        with pytest.raises(ConfigError, match=message):
            parse_sweep_file(p)
    with pytest.raises(ConfigError, match=r"sweep\.cpus_per_trial=inf is not allowed: a finite number"):
        SweepConfig(cpus_per_trial=float("inf"))
