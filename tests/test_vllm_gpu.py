"""vLLM on a real GPU: greedy tokens equal to HF `generate`, and outputs that follow a weight sync.

Skipped without CUDA or without vLLM (`pip install -e ".[vllm]"`), like tests/test_cuda.py; the
plumbing itself is covered on CPU by tests/test_vllm_backend.py. Run on a GPU machine:
    python -m pytest tests/test_vllm_gpu.py
Both sides compute in bf16 but with different kernels (vLLM's fused attention and sampler vs
HF's eager/SDPA), so a greedy near-tie can flip one token and everything after it. The checks
therefore require the first tokens of every prompt and the whole completion of nearly every prompt
to agree, which a wrong weight sync, prompt encoding or stop handling would all break.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from harness.generation import GenerationParams, HFGenerationBackend

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason='vLLM not installed (pip install -e ".[vllm]")'),
    pytest.mark.slow,
]

QUESTIONS = ["What is 12 plus 30?", "Name three primary colours.", "Write a haiku about rain.",
             "How many legs does a spider have?", "Summarise: the meeting moved to Friday.",
             "What is the capital of France?", "Count from one to five.", "Why is the sky blue?"]
PREFIX_TOKENS = 8


def _load(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).to("cuda").eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in QUESTIONS]
    return model, tok, prompts


def _agree(a, b) -> tuple[int, int]:
    """(prompts whose completions are identical, prompts whose first PREFIX_TOKENS agree)."""
    same = sum(x.token_ids == y.token_ids for x, y in zip(a, b))
    prefix = sum(x.token_ids[:PREFIX_TOKENS] == y.token_ids[:PREFIX_TOKENS] for x, y in zip(a, b))
    return same, prefix


def _backend(model, tok, sync):
    from harness.vllm_backend import VLLMGenerationBackend

    return VLLMGenerationBackend.for_model(model, tok, gpu_memory_utilization=0.3, sync=sync)


def test_greedy_tokens_equal_hf_on_smollm2(smollm2_dir):
    model, tok, prompts = _load(smollm2_dir)
    params = GenerationParams(max_new_tokens=48, stop=("\n\n",))
    want = HFGenerationBackend(model, tok, batch_size=8).generate(prompts, params)
    got = _backend(model, tok, sync="checkpoint").generate(prompts, params)
    assert [o.prompt_ids for o in got] == [o.prompt_ids for o in want]
    same, prefix = _agree(got, want)
    assert prefix == len(prompts) and same >= len(prompts) - 1, (same, prefix)


def test_perturbed_weights_synced_into_vllm_are_followed(smollm2_dir):
    model, tok, prompts = _load(smollm2_dir)
    params = GenerationParams(max_new_tokens=32)
    backend = _backend(model, tok, sync="checkpoint")
    before = backend.generate(prompts, params)  # also fills the prefix cache with these prompts
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, device="cuda", dtype=torch.float32).to(p.dtype) * 0.02)
    backend.sync_weights(model)
    after = backend.generate(prompts, params)
    want = HFGenerationBackend(model, tok, batch_size=8).generate(prompts, params)
    same, prefix = _agree(after, want)
    assert prefix == len(prompts) and same >= len(prompts) - 1, (same, prefix)
    assert _agree(before, want)[0] < len(prompts) // 2, "the perturbation changes most greedy completions"


def test_training_with_vllm_rollouts_on_gpu(smollm2_dir, tmp_path):
    from harness.io import read_jsonl
    from harness.training.loop import train
    from tests.training_helpers import make_setup, run_config

    cfg = run_config(smollm2_dir, objective="onpolicy_fkl", rollout_backend="vllm", max_steps=2, precision="bf16")
    res = train(cfg, tmp_path / "run", make_setup(smollm2_dir), progress=False, save_model=False)
    rows = read_jsonl(tmp_path / "run" / "telemetry.jsonl")
    assert len(rows) == 2 and all(r["source"] == "student" and torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert res.summary["rollout_weight_syncs"] == 2
