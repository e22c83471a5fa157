"""The standardized training stage: shifting, masking, padding, accumulation, resume, NaN guard."""

from __future__ import annotations

import json

import pytest
import torch

from harness.errors import TrainingAborted
from harness.io import read_jsonl
from harness.training.batching import TokenSequence, collate
from harness.training.forward import full_logits_at_loss_positions, lm_head, loss_hidden_states
from harness.training.loop import global_batch_indices, pick_source, total_optimizer_steps, train
from objectives.base import Objective, SequenceSource, TeacherSignal, build_objective, register_objective
from objectives.engine import chunked_loss
from tests.training_helpers import load_tiny, make_examples, make_setup, max_weight_diff, run_config, weights


def _seqs(tok):
    eos = tok.eos_token_id
    return [
        TokenSequence((5, 6, 7, 8, 9), (10, 11, eos)),
        TokenSequence((5,), (12, eos)),
        TokenSequence((7, 8, 9, 10, 11, 12, 13), (14, 15, 16, 17)),
    ]


def test_loss_positions_are_shifted_by_one(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    seqs = _seqs(tok)
    batch = collate(seqs, tok.pad_token_id, padding_side="right")
    # The first loss position of sequence 0 is its last prompt token (col 4), predicting token 10.
    assert batch.loss_cols[0].item() == 4 and batch.targets[0].item() == 10
    assert batch.targets.tolist() == [10, 11, tok.eos_token_id, 12, tok.eos_token_id, 14, 15, 16, 17]
    # Gathered logits equal the model's own logits one position earlier than each target.
    with torch.no_grad():
        ref = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        ours = lm_head(model)(loss_hidden_states(model, batch))
    for k in range(batch.n_loss_tokens):
        r, c = batch.loss_rows[k], batch.loss_cols[k]
        torch.testing.assert_close(ours[k], ref[r, c], atol=1e-5, rtol=1e-5)


def test_pad_equal_to_eos_keeps_real_eos(tiny_model_dir):
    _, tok = load_tiny(tiny_model_dir)
    assert tok.pad_token_id == tok.eos_token_id, "the tiny tokenizer mirrors SmolLM2 (pad == eos)"
    batch = collate(_seqs(tok), tok.pad_token_id)
    assert (batch.targets == tok.eos_token_id).sum().item() == 2


def _per_sequence_losses(model, tok, seqs, padding_side):
    obj = build_objective("sft", {})
    batch = collate(seqs, tok.pad_token_id, padding_side=padding_side)
    with torch.no_grad():
        h = loss_hidden_states(model, batch)
        logp = torch.log_softmax(lm_head(model)(h), -1).gather(1, batch.targets[:, None]).squeeze(1)
    return [(-logp[batch.loss_rows == b]).tolist() for b in range(len(seqs))], obj


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_mixed_prompt_lengths_and_padding_side_do_not_change_losses(tiny_model_dir, padding_side):
    model, tok = load_tiny(tiny_model_dir)
    seqs = _seqs(tok)
    together, _ = _per_sequence_losses(model, tok, seqs, padding_side)
    for b, s in enumerate(seqs):
        alone, _ = _per_sequence_losses(model, tok, [s], "right")
        assert len(together[b]) == len(s.completion_ids), "no completion token dropped"
        torch.testing.assert_close(torch.tensor(together[b]), torch.tensor(alone[0]), atol=2e-5, rtol=1e-5)


def test_schedule_helpers():
    assert total_optimizer_steps(10, 3, 4, None) == 8
    assert total_optimizer_steps(10, 3, 4, 5) == 5
    a = global_batch_indices(0, 4, 10, 0) + global_batch_indices(1, 4, 10, 0) + global_batch_indices(2, 4, 10, 0)[:2]
    assert sorted(a) == list(range(10)), "one epoch visits every example once"
    assert global_batch_indices(3, 4, 10, 0) == global_batch_indices(3, 4, 10, 0)
    mix = {SequenceSource.STUDENT: 0.5, SequenceSource.GROUND_TRUTH: 0.5}
    draws = [pick_source(mix, 0, s) for s in range(400)]
    frac = sum(d == SequenceSource.STUDENT for d in draws) / 400
    assert 0.4 < frac < 0.6


def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path):
    results = {}
    for micro in (4, 1):
        setup = make_setup(tiny_model_dir)
        cfg = run_config(tiny_model_dir, "supervised_kd", batch_size=4, micro_batch_size=micro)
        train(cfg, tmp_path / f"m{micro}", setup, max_steps=3, progress=False)
        results[micro] = (weights(setup.student), [r["loss"] for r in read_jsonl(tmp_path / f"m{micro}" / "telemetry.jsonl")])
    assert max_weight_diff(results[4][0], results[1][0]) < 1e-5
    torch.testing.assert_close(torch.tensor(results[4][1]), torch.tensor(results[1][1]), atol=1e-6, rtol=1e-5)


def test_resume_after_interruption_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    cfg = run_config(tiny_model_dir, "onpolicy_fkl", checkpoint_every=2)
    full = make_setup(tiny_model_dir)
    train(cfg, tmp_path / "full", full, max_steps=3, progress=False)

    part = make_setup(tiny_model_dir)
    r1 = train(cfg, tmp_path / "resumed", part, max_steps=3, progress=False, stop_after_step=2)
    assert r1.steps == 2 and not (tmp_path / "resumed" / "model").exists()
    fresh = make_setup(tiny_model_dir)  # a new process would start from freshly loaded weights
    r2 = train(cfg, tmp_path / "resumed", fresh, max_steps=3, progress=False)
    assert r2.resumed_from_step == 2 and r2.steps == 3
    assert max_weight_diff(weights(full.student), weights(fresh.student)) <= 1e-6
    keys = ("step", "loss", "grad_norm", "lr")
    a = [{k: r[k] for k in keys} for r in read_jsonl(tmp_path / "full" / "telemetry.jsonl")]
    b = [{k: r[k] for k in keys} for r in read_jsonl(tmp_path / "resumed" / "telemetry.jsonl")]
    assert a == b


def test_budget_counters_and_telemetry(tiny_model_dir, tmp_path):
    setup = make_setup(tiny_model_dir)
    cfg = run_config(tiny_model_dir, "veto", {"beta_start": 0.8})
    res = train(cfg, tmp_path / "v", setup, max_steps=3, progress=False)
    s = json.loads((tmp_path / "v" / "train_summary.json").read_text())
    assert s["optimizer_steps"] == 3 and s["prompts_seen"] == 12
    assert s["generated_tokens"] > 0 and s["teacher_forward_tokens"] == s["student_forward_tokens"] > 0
    rows = read_jsonl(tmp_path / "v" / "telemetry.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["beta"] == pytest.approx(0.8) and rows[-1]["beta"] == pytest.approx(0.0)
    for r in rows:
        assert r["grad_norm"] > 0 and r["entropy"] > 0 and r["teacher_kl"] >= 0 and r["source"] == "student"
        # the step's time split: rollouts happened, forward/backward ran, the rest is non-negative
        assert r["sequences_s"] > 0 and r["forward_backward_s"] > 0 and r["optimizer_s"] >= 0
    assert (res.model_dir / "config.json").exists()


def test_chunked_training_equals_dense_training(tiny_model_dir, tmp_path):
    out = {}
    for chunk in (None, 3):
        setup = make_setup(tiny_model_dir)
        cfg = run_config(tiny_model_dir, "supervised_kd", loss_chunk_size=chunk)
        train(cfg, tmp_path / f"c{chunk}", setup, max_steps=2, progress=False)
        out[chunk] = weights(setup.student)
    assert max_weight_diff(out[None], out[3]) < 1e-5


@register_objective
class _NaNAfterFirstStep(Objective):
    """Test-only objective: finite loss at step 0, NaN afterwards."""

    name = "test_nan_after_first"
    description = "test only"
    source = SequenceSource.GROUND_TRUTH
    teacher_signal = TeacherSignal.NONE

    def schedule(self, step, total_steps):
        return {"poison": float(step >= 1)}

    def per_token_loss(self, chunk, sched):
        ce = -torch.log_softmax(chunk.student_logits, -1).gather(1, chunk.targets[:, None]).squeeze(1)
        return ce * (float("nan") if sched["poison"] else 1.0)


def test_nonfinite_steps_are_skipped_then_abort_with_checkpoint_intact(tiny_model_dir, tmp_path):
    setup = make_setup(tiny_model_dir)
    cfg = run_config(tiny_model_dir, "test_nan_after_first", checkpoint_every=1, max_nonfinite_in_row=2)
    with pytest.raises(TrainingAborted, match="non-finite"):
        train(cfg, tmp_path / "n", setup, max_steps=6, progress=False)
    rows = read_jsonl(tmp_path / "n" / "telemetry.jsonl")
    assert [r["nonfinite"] for r in rows] == [False, True, True]
    state = json.loads((tmp_path / "n" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 1, "the last good checkpoint (after step 1) is kept"
    for p in setup.student.parameters():
        assert torch.isfinite(p).all()


def test_teacher_generations_are_cached_and_reused(tiny_model_dir, tmp_path):
    cache = tmp_path / "teacher_cache.jsonl"
    cfg = run_config(tiny_model_dir, "seqkd")
    s1 = make_setup(tiny_model_dir, cache_path=cache)
    r1 = train(cfg, tmp_path / "a", s1, max_steps=2, progress=False)
    assert r1.summary["generated_tokens"] > 0
    s2 = make_setup(tiny_model_dir, cache_path=cache)
    r2 = train(cfg, tmp_path / "b", s2, max_steps=2, progress=False)
    assert r2.summary["generated_tokens"] == 0, "second run reads every teacher completion from the cache"


def test_heads_of_different_size_need_explicit_slicing(tiny_model_dir_factory, tmp_path):
    from harness.config import ModelSpec
    from harness.errors import VocabMismatchError
    from harness.pipeline import load_pair
    from harness.training.loop import TrainingSetup

    padded = tiny_model_dir_factory(head_size=520, tie=False)  # 8 padding rows beyond the 512-token vocab
    plain = tiny_model_dir_factory(tie=False, seed=1)
    with pytest.raises(VocabMismatchError, match="lm_head sizes differ"):
        load_pair(ModelSpec(name=str(padded)), ModelSpec(name=str(plain)))
    pair = load_pair(ModelSpec(name=str(padded)), ModelSpec(name=str(plain)), allow_head_slice=True)
    assert pair.logit_columns == 512
    setup = TrainingSetup(teacher=pair.teacher, student=pair.student, tokenizer=pair.tokenizer,
                          examples=make_examples(), render_prompt=lambda ex: ex.prompt, logit_columns=pair.logit_columns)
    before = pair.student.get_output_embeddings().weight.detach().clone()
    res = train(run_config(plain, "supervised_kd"), tmp_path / "s", setup, max_steps=1, progress=False)
    assert res.steps == 1
    assert not torch.equal(before, pair.student.get_output_embeddings().weight.detach()), "the sliced head still trains"


def test_token_budget_holds_a_cost_equal_across_objectives(tiny_model_dir, tmp_path):
    spent = {}
    for objective in ("sft", "onpolicy_fkl"):
        setup = make_setup(tiny_model_dir)
        cfg = run_config(tiny_model_dir, objective, epochs=20, budget={"metric": "student_forward_tokens", "limit": 700})
        res = train(cfg, tmp_path / objective, setup, max_steps=50, progress=False)
        s = res.summary
        assert s["stopped_by_budget"] and 1 < s["optimizer_steps"] < 50
        per_step = s["student_forward_tokens"] / s["optimizer_steps"]
        assert 700 <= s["student_forward_tokens"] < 700 + 1.5 * per_step, "stops at the first step past the budget"
        assert (res.model_dir / "config.json").exists()
        spent[objective] = (s["student_forward_tokens"], per_step)
    gap = abs(spent["sft"][0] - spent["onpolicy_fkl"][0])
    assert gap < 1.5 * max(spent["sft"][1], spent["onpolicy_fkl"][1]), "equal within one step's tokens"


def test_lora_student_trains_and_saves_a_merged_checkpoint(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from harness.config import ModelSpec
    from harness.pipeline import load_pair

    spec = ModelSpec(name=str(tiny_model_dir), lora={"r": 4, "alpha": 8})
    pair = load_pair(ModelSpec(name=str(tiny_model_dir)), spec)
    trainable = [n for n, p in pair.student.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    from harness.training.loop import TrainingSetup

    setup = TrainingSetup(teacher=pair.teacher, student=pair.student, tokenizer=pair.tokenizer,
                          examples=make_examples(), render_prompt=lambda ex: ex.prompt)
    # sft: a LoRA student starts equal to its base, so a KD loss against that same base would be exactly zero.
    res = train(run_config(tiny_model_dir, "sft", lr=1e-2), tmp_path / "lora", setup, max_steps=2, progress=False)
    merged = AutoModelForCausalLM.from_pretrained(res.model_dir)
    assert not any("lora" in k for k in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    diff = max(float((merged.state_dict()[k] - base.state_dict()[k]).abs().max()) for k in base.state_dict())
    assert diff > 0, "the merged adapters changed the weights"


def test_bf16_rollout_copy_tracks_the_student(tiny_model_dir, tmp_path):
    from harness.training.loop import bf16_rollout_copy, sync_rollout_copy

    setup = make_setup(tiny_model_dir)
    copy = bf16_rollout_copy(setup.student)
    assert copy is not None and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in copy.parameters())
    with torch.no_grad():
        for p in setup.student.parameters():
            p.add_(0.5)
    sync_rollout_copy(copy, setup.student)
    for a, b in zip(copy.state_dict().values(), setup.student.state_dict().values()):
        assert torch.equal(a, b.to(torch.bfloat16))
    assert bf16_rollout_copy(copy) is None  # already bf16: nothing to copy
    # the stage with bf16 rollouts: on-policy steps run and train the fp32 student
    before = weights(setup.student)
    cfg = run_config(tiny_model_dir, "onpolicy_fkl", rollout_precision="bf16")
    res = train(cfg, tmp_path / "r", setup, max_steps=2, progress=False)
    assert res.summary["generated_tokens"] > 0 and res.summary["nonfinite_steps"] == 0
    assert next(setup.student.parameters()).dtype == torch.float32
    assert max_weight_diff(before, weights(setup.student)) > 0
