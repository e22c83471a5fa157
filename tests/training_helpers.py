"""Shared helpers for training-stage tests: tiny examples, configs and setups."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.config import RunConfig
from harness.training.loop import TrainingSetup


@dataclass
class SimpleExample:
    id: str
    prompt: str
    response: str | None = None
    references: list = field(default_factory=list)
    answer: str | None = None
    fields: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def make_examples(n: int = 12) -> list[SimpleExample]:
    """Prompts of deliberately different lengths (mixed-length batches are part of what we test)."""
    out = []
    for i in range(n):
        q = f"what is {i} plus {i + 1}" + " please" * (i % 4)
        out.append(SimpleExample(id=f"ex{i}", prompt=q, response=f"{i} plus {i + 1} is {2 * i + 1}"))
    return out


def run_config(model_dir: Path, objective: str = "sft", params: dict | None = None, **train) -> RunConfig:
    base = dict(lr=1e-3, epochs=1, batch_size=4, micro_batch_size=4, max_new_tokens=6, max_prompt_tokens=64,
                max_response_tokens=32, temperature=1.0, top_p=1.0, checkpoint_every=2, loss_chunk_size=16,
                # fp32 everywhere: the invariance tests compare at 1e-5, which bf16 autocast (the CUDA
                # default) cannot meet; test_cuda.py covers the bf16 path explicitly.
                precision="fp32")
    base.update(train)
    return RunConfig(teacher={"name": str(model_dir)}, student={"name": str(model_dir)},
                     task={"name": "gsm8k"}, objective={"name": objective, "params": params or {}}, train=base, seed=0)


def load_tiny(model_dir: Path, seed_offset: int = 0):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if seed_offset:
        # A student that differs from the teacher, deterministically.
        g = torch.Generator().manual_seed(seed_offset)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return model, tok


def make_setup(model_dir: Path, examples=None, cache_path: Path | None = None) -> TrainingSetup:
    teacher, tok = load_tiny(model_dir)
    student, _ = load_tiny(model_dir, seed_offset=1)
    examples = examples or make_examples()

    def render(ex):
        return tok.apply_chat_template([{"role": "user", "content": ex.prompt}], tokenize=False, add_generation_prompt=True)

    return TrainingSetup(teacher=teacher, student=student, tokenizer=tok, examples=examples, render_prompt=render,
                         teacher_key=str(model_dir), teacher_cache_path=cache_path)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_weight_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def write_gsm8k(path: Path, n: int, *, worked: bool = True) -> Path:
    """A tiny GSM8K-format file: "What is i plus i?" with the answer 2i after `####` (and, when
    `worked`, a one-line working before it, as real GSM8K answers have). Returns `path`."""
    import json

    rows = [{"question": f"What is {i} plus {i}?", "answer": (f"{i}+{i}={2 * i}\n" if worked else "") + f"#### {2 * i}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
