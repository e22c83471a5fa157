"""The model-driving evaluation runner writes traceable per-example records and aggregates."""

from __future__ import annotations

import json

import pytest

from harness.config import EvalConfig, TaskConfig
from harness.eval_runner import evaluate_model
from harness.io import read_json, read_jsonl
from tests.training_helpers import load_tiny


@pytest.fixture()
def gsm_file(tmp_path):
    rows = [{"question": f"What is {i} plus 1?", "answer": f"It is {i + 1}.\n#### {i + 1}"} for i in range(3)]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_all_tasks_writes_records(tiny_model_dir, tmp_path, gsm_file):
    model, tok = load_tiny(tiny_model_dir)
    teacher, _ = load_tiny(tiny_model_dir, seed_offset=5)
    cfg = EvalConfig.model_validate({
        "batch_size": 4,
        "gsm8k": {"max_new_tokens": 8},
        "humaneval": {"n_samples": 2, "k": [1, 2], "max_new_tokens": 8, "timeout_s": 5},
        "dialogsum": {"max_new_tokens": 8, "baseline": "references"},
        "diagnostics_limit": 2,
    })
    tasks = [TaskConfig(name="gsm8k", eval_source=f"file:{gsm_file}"),
             TaskConfig(name="humaneval", eval_limit=2),
             TaskConfig(name="dialogsum", eval_source="synthetic_dialogues", eval_limit=3)]
    res = evaluate_model(model, tok, tasks, cfg, tmp_path / "out", data_dir=None, teacher=teacher, progress=False)

    g = read_json(tmp_path / "out" / "eval" / "gsm8k.json")
    assert g["n"] == 3 and 0.0 <= g["accuracy"] <= 1.0 and g["protocol"]["prompt_template_hash"]
    rows = read_jsonl(tmp_path / "out" / "eval" / "gsm8k.jsonl")
    assert sorted(r["target"] for r in rows) == ["1", "2", "3"]
    assert all({"prompt", "output", "extracted", "correct"} <= set(r) for r in rows)

    h = res["humaneval"]
    assert h["n_problems"] == 2 and h["n_samples"] == 2 and "pass@1" in h and "pass@2" in h
    assert h["protocol"]["sandbox"]["confinement"]
    hrows = read_jsonl(tmp_path / "out" / "eval" / "humaneval.jsonl")
    assert all(len(r["completions"]) == 2 and r["n"] == 2 for r in hrows)

    d = res["dialogsum"]
    assert d["n"] == 3 and 0.0 <= d["rougeL"] <= 1.0
    # Baseline = the references, judged by multi-reference ROUGE-L: the reference always wins.
    assert d["win_rate"] == 0.0 and d["losses"] == 3

    diag = res["diagnostics"]
    assert diag["teacher_kl"] > 0 and diag["ref_ce"] > 0
    assert set(diag["per_task"]) == {"gsm8k", "humaneval", "dialogsum"}


def test_eval_cli_on_a_local_checkpoint(tiny_model_dir, tmp_path, gsm_file, capsys):
    from harness.cli import main

    cfg = tmp_path / "eval.yaml"
    cfg.write_text("eval:\n  gsm8k: {max_new_tokens: 6}\n  diagnostics: false\n")
    rc = main(["eval", str(tiny_model_dir), "--tasks", "gsm8k", "--config", str(cfg), "--output-dir", str(tmp_path / "ev"),
               "--no-progress", "--source", f"gsm8k=file:{gsm_file}"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gsm8k"]["n"] == 3
    assert (tmp_path / "ev" / "eval" / "gsm8k.jsonl").exists()
    assert main(["eval", str(tiny_model_dir), "--tasks", "gsm9k"]) == 2


def test_gsm8k_both_protocols_are_reported(tiny_model_dir, tmp_path):
    """The paper protocol and lm-eval's own gsm8k task run side by side, labelled."""
    model, tok = load_tiny(tiny_model_dir)
    gsm = tmp_path / "data" / "gsm8k"
    gsm.mkdir(parents=True)
    rows = [{"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(4)]
    for split in ("train", "test"):
        (gsm / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig.model_validate({"batch_size": 2, "diagnostics": False,
                                     "gsm8k": {"max_new_tokens": 4, "protocols": ["paper", "lm_eval"], "lm_eval_num_fewshot": 1}})
    res = evaluate_model(model, tok, [TaskConfig(name="gsm8k", eval_source=f"file:{gsm / 'test.jsonl'}", eval_limit=2)], cfg,
                         tmp_path / "out", data_dir=tmp_path / "data", progress=False)
    g = res["gsm8k"]
    assert g["protocol"]["name"] == "paper" and g["n"] == 2
    assert set(g["lm_eval"]) >= {"strict-match", "flexible-extract", "n", "num_fewshot"}
    assert g["lm_eval"]["n"] == 2 and g["lm_eval"]["num_fewshot"] == 1


def test_eval_cli_dialogsum_against_a_baseline_model_records_it(tiny_model_dir_factory, tmp_path, capsys):
    """`--baseline-model` writes the baseline's summaries, the judge compares, the protocol names the model."""
    from harness.cli import main

    student, baseline = tiny_model_dir_factory(), tiny_model_dir_factory(seed=7)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("eval:\n  dialogsum: {max_new_tokens: 6}\n  diagnostics: false\n")
    rc = main(["eval", str(student), "--tasks", "dialogsum", "--config", str(cfg), "--limit", "3", "--no-progress",
               "--source", "dialogsum=synthetic_dialogues", "--baseline-model", str(baseline),
               "--output-dir", str(tmp_path / "ev")])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)["dialogsum"]
    assert d["n_judged"] == 3 and d["wins"] + d["losses"] + d["ties"] == 3
    assert d["protocol"]["baseline_model"] == str(baseline)
    rows = read_jsonl(tmp_path / "ev" / "eval" / "dialogsum.jsonl")
    assert all(r["baseline_output"] is not None and r["verdict"] in ("win", "loss", "tie") for r in rows)


class _CountingJudge:
    """Says A every time and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def judge(self, dialogue, summary_a, summary_b, references=()):
        self.calls += 1
        return "A"


def test_baseline_model_against_its_own_summaries_is_50_without_the_judge(tiny_model_dir, tmp_path, monkeypatch):
    """The teacher judged against the teacher's own DialogSum summaries: 50% by construction,
    recorded without a single judge call; any other model still asks the judge once per example."""
    import harness.eval_runner as er
    from harness.config import SuiteConfig
    from harness.suite import plan_cells, wrote_baseline_summaries

    model, tok = load_tiny(tiny_model_dir)
    cfg = EvalConfig.model_validate({"dialogsum": {"max_new_tokens": 6}, "diagnostics": False})
    task = TaskConfig(name="dialogsum", eval_source="synthetic_dialogues", eval_limit=3)
    baseline = er.generate_dialogsum_summaries(model, tok, task, cfg, None, progress=False)
    judge = _CountingJudge()
    monkeypatch.setattr(er, "build_judge", lambda *a, **k: judge)

    own = evaluate_model(model, tok, [task], cfg, tmp_path / "own", data_dir=None, progress=False,
                         baseline_outputs={"dialogsum": baseline}, is_baseline_model=True)["dialogsum"]
    assert judge.calls == 0
    assert (own["win_rate"], own["ties"], own["wins"], own["losses"], own["win_rate_se"]) == (0.5, 3, 0, 0, 0.0)
    assert own["protocol"]["pairwise"]["judge"].startswith("not called")
    assert own["protocol"]["pairwise"]["identical_outputs"] == 3  # same model, same greedy decoding
    rows = read_jsonl(tmp_path / "own" / "eval" / "dialogsum.jsonl")
    assert [r["verdict"] for r in rows] == ["tie"] * 3

    other = evaluate_model(model, tok, [task], cfg, tmp_path / "other", data_dir=None, progress=False,
                           baseline_outputs={"dialogsum": baseline})["dialogsum"]
    assert judge.calls == 3 and other["n_judged"] == 3

    suite = SuiteConfig.model_validate({
        "name": "t", "teacher": {"name": "x"}, "student": {"name": "y"}, "tasks": [{"name": "dialogsum"}],
        "objectives": [{"name": "sft"}]})
    kinds = {c.cell_id: wrote_baseline_summaries(c, suite) for c in plan_cells(suite)}
    assert kinds == {"dialogsum__teacher": True, "dialogsum__student_init": False, "dialogsum__sft__s0": False}
