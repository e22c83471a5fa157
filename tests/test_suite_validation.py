"""`run` and `run --dry-run` refuse a suite with any bad cell before doing any work.

One test per place an objective parameter can come from: the objective's params, per-task params,
a sweep (its values and its parameter name), and a KEY=VALUE override on the command line. Each
must exit 2 naming the cell and the field path, print no plan and write nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.suite import EMBEDDED_SUITES_DIR


def _suite(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((EMBEDDED_SUITES_DIR / "smoke.yaml").read_text())
    raw.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _refused(tmp_path: Path, capsys, suite: Path, *extra: str) -> str:
    """Run both verbs; both must exit 2 before printing a plan or writing anything. Returns stderr."""
    results, boards = tmp_path / "results", tmp_path / "boards"
    messages = []
    for dry in (True, False):
        argv = ["run", str(suite), *extra, "--results-dir", str(results), "--leaderboards-dir", str(boards),
                "--no-progress"] + (["--dry-run"] if dry else [])
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert "suite smoke:" not in out and out.strip() == "", out  # no half-printed plan
        messages.append(err)
    assert not results.exists() and not boards.exists()
    assert messages[0] == messages[1]
    return messages[0]


def test_objective_params(tmp_path, capsys) -> None:
    raw = yaml.safe_load((EMBEDDED_SUITES_DIR / "smoke.yaml").read_text())
    raw["objectives"][4]["params"]["beta_strat"] = 0.8
    err = _refused(tmp_path, capsys, _suite(tmp_path, objectives=raw["objectives"]))
    # refused while loading the file (the objective alone is invalid): the path names the entry
    assert "objectives.4: " in err and "beta_strat: unknown parameter; did you mean 'beta_start'" in err


def test_per_task_objective_params(tmp_path, capsys) -> None:
    suite = _suite(tmp_path, task_objective_params={"gsm8k": {"veto": {"beta_strat": 0.8}},
                                                    "humaneval": {"veto": {"beta_start": 1.0}}})
    err = _refused(tmp_path, capsys, suite)
    assert "cell gsm8k__veto__s0: task_objective_params.gsm8k.veto.beta_strat: unknown parameter" in err
    assert "did you mean 'beta_start'" in err
    assert "humaneval__veto" not in err and "1 problem(s)" in err  # only the bad cell is named


def test_sweep_values_and_sweep_param(tmp_path, capsys) -> None:
    suite = _suite(tmp_path, sweeps=[{"objective": "veto", "param": "beta_start", "values": [0.5, 99]}])
    err = _refused(tmp_path, capsys, suite)
    for task in ("gsm8k", "humaneval", "dialogsum"):  # the sweep value overrides every per-task value
        assert f"cell {task}__veto__beta_start=99__s0: sweeps.0.values.1: " in err
    assert "beta_start=0.5" not in err and "3 problem(s)" in err
    assert "got 99" in err and "allowed range" in err

    suite = _suite(tmp_path, sweeps=[{"objective": "veto", "param": "beta_strat", "values": [0.5]}])
    err = _refused(tmp_path, capsys, suite)
    assert "cell gsm8k__veto__beta_strat=0.5__s0: sweeps.0.param: unknown parameter" in err


def test_command_line_override(tmp_path, capsys) -> None:
    suite = _suite(tmp_path)
    err = _refused(tmp_path, capsys, suite, "task_objective_params.dialogsum.veto.beta_start=-1")
    assert ("cell dialogsum__veto__s0: task_objective_params.dialogsum.veto.beta_start (set by the override "
            "`task_objective_params.dialogsum.veto.beta_start=-1`)") in err
    assert "gsm8k__veto" not in err


def test_every_shard_is_validated(tmp_path, capsys) -> None:
    """A bad cell in another shard still stops this shard before it starts."""
    suite = _suite(tmp_path, task_objective_params={"dialogsum": {"veto": {"beta_strat": 0.3}}})
    err = _refused(tmp_path, capsys, suite, "--shard", "1/21")
    assert "cell dialogsum__veto__s0" in err


@pytest.mark.parametrize("suite", ["smoke", "paper"])
def test_embedded_suites_pass_cell_validation(suite, capsys) -> None:
    """Their cells validate, so the plan is printed (offline, paper's preflight may still refuse
    the run afterwards: its models are not here)."""
    main(["run", suite, "--dry-run"])
    out, err = capsys.readouterr()
    assert f"suite {suite}:" in out and "problem(s) in its cells" not in err
