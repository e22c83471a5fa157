"""The out-of-tree example plugin (examples/jeffreys_plugin) installs with pip and is discovered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from objectives import base
from objectives.base import build_objective, describe_all, discover, get_objective, list_objectives, unregister_objective
from objectives.conformance import assert_conformant, single_threaded
from objectives.engine import make_loss_chunk

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "jeffreys_plugin"


@pytest.fixture(scope="module")
def installed_plugin(install_example) -> Path:
    """The example installed into a private target directory (offline, no dependencies)."""
    return install_example(EXAMPLE)


def test_entry_point_is_declared(installed_plugin: Path) -> None:
    (dist_info,) = installed_plugin.glob("distill_bench_jeffreys-*.dist-info")
    text = (dist_info / "entry_points.txt").read_text()
    assert "[distill_bench.objectives]" in text and "jeffreys = distill_bench_jeffreys" in text


def test_plugin_is_listed_in_a_fresh_process(installed_plugin: Path) -> None:
    code = "import json; from objectives.base import describe_all; print(json.dumps([r['name'] for r in describe_all()]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_plugin), str(REPO)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "jeffreys" in names and "veto" in names


def test_plugin_is_discovered_and_conformant(installed_plugin: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(installed_plugin))
    try:
        discover(refresh=True)  # this process already ran discovery: rescan the entry points
        assert "jeffreys" in {cls.name for cls in list_objectives()}
        cls = get_objective("jeffreys")
        assert cls.__module__ == "distill_bench_jeffreys"
        row = next(r for r in describe_all() if r["name"] == "jeffreys")
        assert row["params"][0]["name"] == "forward_weight" and row["params"][0]["range"] == "[0, 1]"
        assert row["sources"] == ["student"] and row["teacher_signal"] == "full_logits"

        # w = 1 is exactly on-policy forward KL
        s, t, y = torch.randn(4, 9), torch.randn(4, 9), torch.randint(0, 9, (4,))
        jeff, fkl = build_objective("jeffreys", {"forward_weight": 1.0}), build_objective("onpolicy_fkl", {})
        a = jeff.per_token_loss(make_loss_chunk(jeff, s, t, y), {})
        b = fkl.per_token_loss(make_loss_chunk(fkl, s, t, y), {})
        assert torch.allclose(a, b)

        with single_threaded():  # the plugin's own reference_loss is checked (the kit fails one without)
            results = assert_conformant("jeffreys", {"forward_weight": 0.3})
            assert {r.name: r.status for r in results}["reference_gradient"] == "pass"
            assert_conformant("jeffreys", {"forward_weight": 0.0}, memory=False)
    finally:
        unregister_objective("jeffreys")
        sys.modules.pop("distill_bench_jeffreys", None)
        base._ENTRY_POINTS_LOADED.discard(("jeffreys", "distill_bench_jeffreys"))
    assert "jeffreys" not in {cls.name for cls in list_objectives()}


def test_plugin_in_cli_listing_and_a_training_run(installed_plugin: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Installed plugin: no harness change, yet `distill-bench objectives` lists it and `train` runs it."""
    import yaml

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_plugin), str(REPO)]), "OMP_NUM_THREADS": "1"}
    listing = subprocess.run([sys.executable, "-m", "harness.cli", "objectives"], capture_output=True, text=True,
                             env=env, cwd=REPO, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "\njeffreys\n" in "\n" + listing.stdout and "forward_weight" in listing.stdout

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(8)))
    cfg = {"teacher": {"name": str(tiny_model_dir)}, "student": {"name": str(tiny_model_dir)},
           "task": {"name": "gsm8k", "train_source": f"file:{data}"},
           "objective": {"name": "jeffreys", "params": {"forward_weight": 0.5}},
           "train": {"batch_size": 4, "micro_batch_size": 4, "max_new_tokens": 4, "max_prompt_tokens": 32},
           "output_dir": str(tmp_path / "run")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = subprocess.run([sys.executable, "-m", "harness.cli", "train", str(tmp_path / "run.yaml"), "--max-steps", "2",
                          "--no-progress"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["objective"] == "jeffreys" and summary["optimizer_steps"] == 2
    rows = [json.loads(l) for l in (tmp_path / "run" / "telemetry.jsonl").read_text().splitlines()]
    assert all(r["source"] == "student" and r["loss"] >= 0 for r in rows)
