"""The vLLM backend's plumbing on CPU, against tests/fake_vllm.py (the vLLM 0.33.0 surface we call).

What is checked here: config-time refusal without vLLM/CUDA; prompt ids, completions and stop
handling identical to HFGenerationBackend; weights in the engine equal the student's after a sync
(tied embeddings, LoRA merged); the prefix cache reset after each sync; the training loop syncing
before each on-policy step and never otherwise; evaluation syncing trained models only.
bf16 numerics and real vLLM kernels: tests/test_vllm_gpu.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from harness.config import EvalConfig, RunConfig, TaskConfig, TrainConfig, validate
from harness.errors import ConfigError
from harness.generation import GenerationParams, HFGenerationBackend, eos_token_ids
from tests import fake_vllm
from tests.training_helpers import load_tiny, make_setup, run_config

PROMPTS = ["a b c", "a much longer prompt with many more words in it than the others", "x", "y z"]


@pytest.fixture()
def fake(monkeypatch):
    return fake_vllm.install(monkeypatch)


@pytest.fixture(scope="module")
def untied_dir(tiny_model_dir_factory):
    """Untied head: the tied tiny model mostly repeats its last input token, too flat a test of sampling."""
    return tiny_model_dir_factory(tie=False)


def _retrained(model_dir, factory):
    """A model with `model_dir`'s checkpoint path but quite different weights (another random init),
    standing in for a trained student: same engine, visibly different outputs."""
    model, tok = load_tiny(model_dir)
    other, _ = load_tiny(factory(tie=False, seed=1))
    model.load_state_dict(other.state_dict())
    return model, tok


def _vllm(model, tok, sync="now", **kw):
    from harness.vllm_backend import VLLMGenerationBackend

    return VLLMGenerationBackend.for_model(model, tok, gpu_memory_utilization=0.3, sync=sync, **kw)


def _engine_params(backend) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backend.llm.model.hf.state_dict().items()}


def _same_as(a, b):
    return [(o.prompt_ids, o.token_ids, o.text, o.finish_reason, o.sample_index) for o in a] == \
           [(o.prompt_ids, o.token_ids, o.text, o.finish_reason, o.sample_index) for o in b]


# ----------------------------------------------------------------------------- config


def test_config_refuses_vllm_without_vllm_or_cuda(tiny_model_dir):
    with pytest.raises(ConfigError) as err:
        validate(TrainConfig, {"rollout_backend": "vllm"}, "run.yaml")
    msg = str(err.value)
    assert "rollout_backend" in msg and 'pip install -e ".[vllm]"' in msg and "CUDA" in msg
    with pytest.raises(ConfigError) as err:
        validate(EvalConfig, {"backend": "vllm"}, "suite.yaml")
    assert "backend" in str(err.value) and 'pip install -e ".[vllm]"' in str(err.value)


def test_config_accepts_vllm_where_it_can_run(fake, tiny_model_dir):
    cfg = run_config(tiny_model_dir, rollout_backend="vllm", vllm={"gpu_memory_utilization": 0.5, "sleep": True})
    assert cfg.train.rollout_backend == "vllm" and cfg.train.vllm.gpu_memory_utilization == 0.5
    assert validate(EvalConfig, {"backend": "vllm"}).backend == "vllm"
    with pytest.raises(ConfigError, match="rollout_precision"):
        validate(TrainConfig, {"rollout_backend": "vllm", "rollout_precision": "bf16"})
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        validate(TrainConfig, {"rollout_backend": "vllm", "vllm": {"gpu_memory_utilization": 1.5}})


# ----------------------------------------------------------------------------- generation parity


def _stop_from_hf(model, tok) -> str:
    """A stop string the tiny model really produces (a random model never writes "\\n\\n")."""
    hf = HFGenerationBackend(model, tok, batch_size=2)
    text = hf.generate(PROMPTS[:1], GenerationParams(max_new_tokens=8))[0].text
    assert len(text) >= 6, text
    return text[3:6]


@pytest.mark.parametrize("omit_stop_token", [False, True])
def test_greedy_matches_hf_backend_ids_and_stops(fake, tiny_model_dir, monkeypatch, omit_stop_token):
    monkeypatch.setattr(fake_vllm, "OMIT_STOP_TOKEN", omit_stop_token)
    model, tok = load_tiny(tiny_model_dir)
    stop = _stop_from_hf(model, tok)
    # Make one token the model emits greedily an extra EOS, so the EOS path is exercised too.
    hf = HFGenerationBackend(model, tok, batch_size=2)
    free = hf.generate(PROMPTS, GenerationParams(max_new_tokens=10))
    extra_eos = free[2].token_ids[2]
    model.generation_config.eos_token_id = sorted({tok.eos_token_id, extra_eos})
    params = GenerationParams(max_new_tokens=10, stop=(stop,), max_prompt_tokens=12)
    want = hf.generate(PROMPTS, params)
    got = _vllm(model, tok, sync="checkpoint").generate(PROMPTS, params)
    assert _same_as(got, want)
    reasons = {o.finish_reason for o in want}
    assert {"stop", "eos"} <= reasons, f"both stop paths must be exercised, got {reasons}"
    assert any(len(o.prompt_ids) == 12 for o in got), "max_prompt_tokens cuts the long prompt from the left"
    engine = fake_vllm.ENGINES[-1]
    sent = engine.log[-1][1]
    assert [ids for ids, _ in sent] == [o.prompt_ids for o in want], "prompts go in as the HF backend's token ids"
    assert all(sp.temperature == 0 and sp.stop == [stop] and set(sp.stop_token_ids) == eos_token_ids(model, tok)
               for _, sp in sent)


def test_n_samples_are_one_request_per_prompt_with_its_own_seed(fake, untied_dir):
    model, tok = load_tiny(untied_dir)
    backend = _vllm(model, tok, sync="checkpoint")
    params = GenerationParams(max_new_tokens=6, temperature=2.0, top_p=0.99, n=3, seed=11)
    a = backend.generate(PROMPTS, params)
    b = backend.generate(PROMPTS, params)
    assert [o.prompt for o in a] == [p for p in PROMPTS for _ in range(3)]
    assert [o.sample_index for o in a] == [0, 1, 2] * len(PROMPTS)
    assert [o.token_ids for o in a] == [o.token_ids for o in b], "per-request seeds make sampling reproducible"
    assert any(len({tuple(o.token_ids) for o in a[i : i + 3]}) > 1 for i in range(0, len(a), 3)), "samples differ"
    sent = fake_vllm.ENGINES[-1].log[-1][1]
    assert len(sent) == len(PROMPTS) and all(sp.n == 3 and sp.top_p == 0.99 for _, sp in sent)
    assert len({sp.seed for _, sp in sent}) == len(PROMPTS)


# ----------------------------------------------------------------------------- weight sync


def test_sync_puts_the_students_weights_in_the_engine_tied_embeddings(fake, tiny_model_dir):
    student, tok = load_tiny(tiny_model_dir, seed_offset=3)
    assert student.config.tie_word_embeddings
    backend = _vllm(student, tok, sync="caller")
    assert max((a - b).abs().max().item() for a, b in zip(_engine_params(backend).values(),
                                                            student.state_dict().values())) > 0, "engine starts from disk"
    backend.sync_weights(student)
    engine = _engine_params(backend)
    assert engine.keys() == student.state_dict().keys()
    assert all(torch.equal(engine[k], v) for k, v in student.state_dict().items())
    assert engine["lm_head.weight"].data_ptr() != 0 and torch.equal(engine["lm_head.weight"], engine["model.embed_tokens.weight"])
    with torch.no_grad():
        student.model.embed_tokens.weight.mul_(1.5)
    backend.sync_weights(student)
    assert torch.equal(backend.llm.model.hf.lm_head.weight, student.lm_head.weight), "the tied head follows the embedding"
    assert [e for e, _ in fake_vllm.ENGINES[-1].log] == ["load", "reset", "load", "reset"]


def test_sync_merges_lora_without_touching_the_student(fake, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base, tok = load_tiny(tiny_model_dir, seed_offset=2)
    student = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    backend = _vllm(student, tok)
    merged = copy.deepcopy(student).merge_and_unload().state_dict()
    engine = _engine_params(backend)
    assert engine.keys() == merged.keys()
    for k in merged:
        assert torch.allclose(engine[k], merged[k], atol=1e-6, rtol=0), k
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(engine[q], base.model.layers[0].self_attn.q_proj.base_layer.weight), "the delta is in"
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items()), "the student is not merged in place"


def test_outputs_follow_a_sync_because_the_prefix_cache_is_reset(fake, untied_dir, tiny_model_dir_factory, monkeypatch):
    old, tok = load_tiny(untied_dir)
    new, _ = _retrained(untied_dir, tiny_model_dir_factory)
    params = GenerationParams(max_new_tokens=6)
    backend = _vllm(old, tok, sync="checkpoint")
    before = backend.generate(PROMPTS, params)  # fills the prefix cache with the old weights' prefills
    backend.sync_weights(new)
    after = backend.generate(PROMPTS, params)
    want = HFGenerationBackend(new, tok).generate(PROMPTS, params)
    assert _same_as(after, want) and not _same_as(before, want)
    # The control: the same sync without the reset samples first tokens from stale prefills.
    backend.sync_weights(old)
    backend.generate(PROMPTS, params)
    monkeypatch.setattr(backend.llm, "reset_prefix_cache", lambda *a, **k: True)
    backend.sync_weights(new)
    stale = backend.generate(PROMPTS, params)
    assert not _same_as(stale, want), "without the reset the fake engine reuses the old prefills"


def test_sleep_mode_wakes_for_each_phase(fake, tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir, seed_offset=1)
    backend = _vllm(model, tok, sleep=True)
    backend.generate(PROMPTS[:2], GenerationParams(max_new_tokens=3))
    assert [e for e, _ in fake_vllm.ENGINES[-1].log] == ["load", "reset", "sleep", "wake", "generate", "sleep"]
    assert fake_vllm.ENGINES[-1].kwargs["enable_sleep_mode"] is True


# ----------------------------------------------------------------------------- training loop


class _SyncCheck:
    """Wraps sync_weights: records, at each sync, that the engine then holds the student's weights."""

    def __init__(self, monkeypatch):
        from harness.vllm_backend import VLLMGenerationBackend

        self.exact: list[bool] = []
        original = VLLMGenerationBackend.sync_weights

        def checked(backend, model):
            n = original(backend, model)
            engine = backend.llm.model.hf.state_dict()
            self.exact.append(all(torch.equal(engine[k], v) for k, v in model.state_dict().items()))
            return n

        monkeypatch.setattr(VLLMGenerationBackend, "sync_weights", checked)


def test_loop_syncs_before_each_on_policy_step_and_never_otherwise(fake, tiny_model_dir, tmp_path, monkeypatch):
    from harness.io import read_jsonl
    from harness.training.loop import train

    check = _SyncCheck(monkeypatch)
    cfg = run_config(tiny_model_dir, objective="gkd", params={"lmbda": 0.5}, rollout_backend="vllm", max_steps=6)
    res = train(cfg, tmp_path / "run", make_setup(tiny_model_dir), progress=False, save_model=False)
    sources = [r["source"] for r in read_jsonl(tmp_path / "run" / "telemetry.jsonl")]
    assert "student" in sources and len(set(sources)) == 2, sources
    events = [e for e, _ in fake_vllm.ENGINES[-1].log]
    assert events.count("generate") == sources.count("student") == events.count("load") == events.count("reset")
    # each generate comes right after its own load + reset: synced before every rollout, never in between
    assert all(events[i - 2 : i] == ["load", "reset"] for i, e in enumerate(events) if e == "generate")
    assert check.exact == [True] * sources.count("student")
    assert res.summary["rollout_backend"] == "vllm" and res.summary["rollout_weight_syncs"] == sources.count("student")


def test_loop_without_rollouts_starts_no_engine(fake, tiny_model_dir, tmp_path):
    from harness.training.loop import train

    cfg = run_config(tiny_model_dir, objective="sft", rollout_backend="vllm", max_steps=2)
    train(cfg, tmp_path / "run", make_setup(tiny_model_dir), progress=False, save_model=False)
    assert fake_vllm.ENGINES == []


def test_vllm_rollouts_train_like_hf_rollouts_when_greedy(fake, tiny_model_dir, tmp_path):
    """Greedy rollouts are the same token ids on both backends, so the whole run is the same."""
    from harness.io import read_jsonl
    from harness.training.loop import train

    losses = {}
    for backend in ("hf", "vllm"):
        cfg = run_config(tiny_model_dir, objective="onpolicy_fkl", rollout_backend=backend, max_steps=3, temperature=0.0)
        train(cfg, tmp_path / backend, make_setup(tiny_model_dir), progress=False, save_model=False)
        losses[backend] = [r["loss"] for r in read_jsonl(tmp_path / backend / "telemetry.jsonl")]
    assert losses["vllm"] == pytest.approx(losses["hf"], rel=1e-6, abs=1e-7)


# ----------------------------------------------------------------------------- evaluation


def test_eval_on_vllm_matches_hf_and_syncs_trained_models_only(fake, untied_dir, tiny_model_dir_factory, tmp_path):
    import json

    from harness.eval_runner import evaluate_model
    from harness.io import read_jsonl

    rows = [{"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"} for i in range(3)]
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = [TaskConfig(name="gsm8k", eval_source=f"file:{gsm}")]
    base = {"gsm8k": {"max_new_tokens": 6}, "diagnostics": False}
    teacher, tok = load_tiny(untied_dir)
    outputs = {}
    for backend in ("hf", "vllm"):
        cfg = EvalConfig.model_validate({**base, "backend": backend})
        evaluate_model(teacher, tok, tasks, cfg, tmp_path / backend, data_dir=None, progress=False,
                       weights_from_checkpoint=True)
        outputs[backend] = [r["output"] for r in read_jsonl(tmp_path / backend / "eval" / "gsm8k.jsonl")]
    assert outputs["vllm"] == outputs["hf"]
    assert [e for e, _ in fake_vllm.ENGINES[0].log] == ["generate"], "a checkpoint's weights need no sync"

    trained, _ = _retrained(untied_dir, tiny_model_dir_factory)
    for backend in ("hf", "vllm"):
        cfg = EvalConfig.model_validate({**base, "backend": backend})
        evaluate_model(trained, tok, tasks, cfg, tmp_path / f"trained-{backend}", data_dir=None, progress=False)
    trained_out = [read_jsonl(tmp_path / f"trained-{b}" / "eval" / "gsm8k.jsonl") for b in ("hf", "vllm")]
    assert [r["output"] for r in trained_out[0]] == [r["output"] for r in trained_out[1]] != outputs["hf"]
    assert len(fake_vllm.ENGINES) == 1, "one engine per architecture, reused"
    assert [e for e, _ in fake_vllm.ENGINES[0].log][1:] == ["load", "reset", "generate"]
    # An untrained model evaluated after it on the same engine: the engine holds other weights, so it syncs.
    evaluate_model(teacher, tok, tasks, cfg, tmp_path / "again", data_dir=None, progress=False, weights_from_checkpoint=True)
    assert [r["output"] for r in read_jsonl(tmp_path / "again" / "eval" / "gsm8k.jsonl")] == outputs["hf"]
    assert [e for e, _ in fake_vllm.ENGINES[0].log][-3:] == ["load", "reset", "generate"]


def test_eval_in_a_process_group_builds_its_engine_as_the_rollouts_do(fake, tiny_model_dir):
    """Under torchrun each rank's engine must be one of the launcher's processes (external_launcher),
    for evaluation as for rollouts; built alike, a cell's evaluation reuses its rollouts' engine."""
    from harness.eval_runner import generation_backend

    model, tok = load_tiny(tiny_model_dir)
    cfg = EvalConfig.model_validate({"backend": "vllm", "vllm": {"gpu_memory_utilization": 0.3}})
    alone = generation_backend(model, tok, cfg, progress=False, weights_from_checkpoint=True)
    assert fake_vllm.ENGINES[-1].kwargs["distributed_executor_backend"] is None
    rollouts = _vllm(model, tok, sync="caller", world_size=2)  # as the training loop builds it for 2 processes
    assert rollouts.engine is not alone.engine
    assert fake_vllm.ENGINES[-1].kwargs["distributed_executor_backend"] == "external_launcher"
    ev = generation_backend(model, tok, cfg, progress=False, weights_from_checkpoint=False, world_size=2)
    assert ev.engine is rollouts.engine and len(fake_vllm.ENGINES) == 2, "the rollouts' engine, not a third one"
