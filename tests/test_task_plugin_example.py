"""The out-of-tree example task (examples/products_task) installs with pip and runs in a suite, no harness edit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "products_task"


@pytest.fixture(scope="module")
def installed_task(install_example) -> Path:
    """The example installed into a private target directory (offline, no dependencies, no index)."""
    return install_example(EXAMPLE)


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def test_installed_task_is_declared_split_and_listed(installed_task: Path) -> None:
    (dist_info,) = installed_task.glob("distill_bench_products_task-*.dist-info")
    assert "[distill_bench.tasks]" in (dist_info / "entry_points.txt").read_text()
    assert (installed_task / "distill_bench_products" / "products.yaml").is_file()
    listing = subprocess.run([sys.executable, "-m", "harness.cli", "tasks"], capture_output=True, text=True,
                             env=_env(installed_task), cwd=REPO, timeout=300)
    assert listing.returncode == 0, listing.stderr
    block = listing.stdout.split("\nproducts", 1)[1]
    assert "entry point 'products'" in block.splitlines()[0]
    assert "metrics: accuracy, agreement" in block and "needs: baseline_outputs" in block

    code = ("import json; from harness.data import get_task, load_examples; t = get_task('products'); "
            "print(json.dumps({s: [e.id for e in load_examples(t, s)] for s in ('train', 'eval')}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(installed_task),
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(ids["train"]) == 75 and len(ids["eval"]) == 25 and not set(ids["train"]) & set(ids["eval"])
    assert len(set(ids["train"]) | set(ids["eval"])) == 100


def test_installed_task_trains_evaluates_and_reaches_the_leaderboard(installed_task: Path, tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    suite = {
        "name": "tinyproducts", "teacher": {"name": str(tiny_model_dir)},
        "student": {"derive_from": "teacher", "keep_layers": [0, 3]},
        "tasks": [{"name": "products", "train_limit": 8, "eval_limit": 4}],
        "objectives": [{"name": "sft"}, {"name": "supervised_kd"}],
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch_size": 4, "max_new_tokens": 4,
                  "max_prompt_tokens": 64, "max_response_tokens": 8, "checkpoint_every": 5},
        "eval": {"batch_size": 4, "diagnostics_limit": 2},
        "baselines": ["teacher"], "keep_models": False,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), "--results-dir", str(tmp_path / "results"),
                          "--leaderboards-dir", str(tmp_path / "boards"), "--no-progress"],
                         capture_output=True, text=True, env=_env(installed_task), cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "leaderboard: " in run.stdout and "ReportFiles(" not in run.stdout

    cells = tmp_path / "results" / "tinyproducts" / "cells"
    teacher_out = json.loads((tmp_path / "results" / "tinyproducts" / "baseline_outputs" / "products-teacher.json").read_text())
    assert len(teacher_out) == 4
    for cell in ("products__teacher", "products__sft__s0", "products__supervised_kd__s0"):
        agg = json.loads((cells / cell / "cell.json").read_text())["metrics"]["products"]
        rows = [json.loads(l) for l in (cells / cell / "eval" / "products.jsonl").read_text().splitlines()]
        assert agg["n"] == 4 and agg["accuracy"] == sum(r["correct"] for r in rows) / 4
        assert agg["agreement"] == sum(r["agrees"] for r in rows) / 4
        assert all(r["teacher_output"] == teacher_out[r["id"]] for r in rows)
        proto = agg["protocol"]
        assert proto["scorer"] == "distill_bench_products.scoring" and proto["definition"]["name"] == "products"
        assert proto["decoding"]["stop"] == ["\n"] and proto["protocol_hash"]
    teacher_rows = [json.loads(l) for l in (cells / "products__teacher" / "eval" / "products.jsonl").read_text().splitlines()]
    # The teacher agrees with itself exactly where it wrote a number.
    assert all(r["agrees"] == (r["extracted"] is not None) for r in teacher_rows)

    board = (tmp_path / "boards" / "tinyproducts.md").read_text()
    header = next(l for l in board.splitlines() if "Products acc" in l)
    assert "Products agreement w/ teacher" in header
    assert "| sft" in board and "| supervised_kd" in board
