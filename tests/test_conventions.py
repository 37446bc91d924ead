"""What a newcomer relies on (issue 15, Conventions): the package installs and registers its environment, the
guide's command forms work, and error lines carry one prefix."""

import ast
import os
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dqlray.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def third_party_imports(folder: Path) -> set[str]:
    """Top-level names of the modules that ``folder``'s Python files import, other than the standard library's."""
    names = set()
    for f in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "dqlray"}


def test_pyproject_declares_every_runtime_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower() for r in project["dependencies"]}
    dists = packages_distributions()
    imported = third_party_imports(ROOT / "dqlray")
    missing = {m: dists.get(m) for m in imported if not {d.lower() for d in dists.get(m, [m])} & declared}
    assert not missing, f"imported by dqlray/ but not in pyproject's dependencies: {missing}"
    assert {"test", "bench"} <= set(project["optional-dependencies"])
    # every range admits the exact pin of the tested set
    pins = {Requirement(line).name.lower(): Requirement(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    for r in map(Requirement, project["dependencies"]):
        pin = pins[r.name.lower()]
        assert len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==", f"{pin} is not an exact pin"
        assert r.specifier.contains(next(iter(pin.specifier)).version), f"{r} refuses the tested {pin}"


def test_import_dqlray_registers_the_environment_without_importing_gymnasium():
    code = ("import sys, dqlray; assert 'gymnasium' not in sys.modules and 'numpy' not in sys.modules; "
            "import gymnasium as gym; from dqlray.data import synth_market; "
            "env = gym.make('dqlray/Trading-v0', data=synth_market(400, seed=0)); obs, _ = env.reset(seed=1); "
            "print(type(env.unwrapped).__name__, obs.shape)")
    p = run(["-c", code])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "TradingEnv"
    # gymnasium imported first, then dqlray
    p = run(["-c", "import gymnasium as gym, dqlray; print('dqlray/Trading-v0' in gym.registry)"])
    assert p.stdout.strip() == "True", p.stderr


def error_line(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_error_lines_carry_one_prefix(capsys):
    assert error_line(capsys, ["train", "--episodes", "x"]) == \
        "dqlray train: error: argument --episodes: invalid int value: 'x'"
    assert error_line(capsys, ["bogus"]).startswith("dqlray: error: argument command: invalid choice: 'bogus'")
    assert error_line(capsys, ["data", "check"]) == "dqlray data check: error: the following arguments are required: file"
    p = run(["tune_main.py", "--bogus"])
    assert p.returncode == 2 and p.stderr.strip() == "tune_main.py: error: unrecognized arguments: --bogus"


def test_results_dir_naming_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("")
    assert error_line(capsys, ["train", "--results_dir", str(f)]) == \
        f"dqlray: error: --results_dir {f}: is a file, not a folder"
    assert error_line(capsys, ["train", "--results_dir", str(f / "sub")]) == \
        f"dqlray: error: --results_dir {f / 'sub'}: is inside {f}, which is a file, not a folder"
    p = run(["train_single.py", "--results_dir", str(f)])
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags", [["--results_dir"], ["--results-dir"]])
def test_the_guides_comparison_form_is_accepted(tmp_path, capsys, flags):
    # (a folder with finished runs is compared in tests/test_report.py; here the flag is parsed and checked)
    assert error_line(capsys, ["compare", *flags, str(tmp_path / "local_results")]) == \
        f"dqlray: error: {tmp_path / 'local_results'}: no such folder"
    (tmp_path / "f").write_text("")
    assert error_line(capsys, ["compare", *flags, str(tmp_path / "f")]) == \
        f"dqlray: error: {tmp_path / 'f'}: is a file, not a folder of results"
    (tmp_path / "empty").mkdir()
    assert "no finished run or sweep in it" in error_line(capsys, ["compare", *flags, str(tmp_path / "empty")])
    p = run([str(ROOT / "generate_comparison_report.py"), "--results_dir", "./local_results"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip() == "dqlray: error: local_results: no such folder"
