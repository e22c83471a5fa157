"""A CPU stand-in for the part of vLLM 0.33.0 that harness/vllm_backend.py calls, and nothing more.

Installed as the `vllm` module (`install(monkeypatch)`), so the backend runs its real code path:
`LLM(...)` with vLLM's keyword names (unknown ones are refused, as vLLM's EngineArgs refuses them),
`generate(list[TokensPrompt], list[SamplingParams], use_tqdm=)`, `apply_model`, `reset_prefix_cache`,
`sleep`, `wake_up`. It decodes with the Hugging Face model found at `model=` so tests can compare it
token for token with HFGenerationBackend; it computes in fp32 whatever `dtype` is requested (the
request is recorded): bf16 numerics are the GPU tests' job (tests/test_vllm_gpu.py).

Behaviours the tests rely on, mirroring vLLM:
- the model's `load_weights(iterable of (hf_name, tensor))` copies by HF name (cast to the engine's
  dtype), skips `lm_head.*` when embeddings are tied, raises on an unknown name, returns the loaded names;
- the prefix cache keeps what a prompt's prefill produced (here: its first-step logits) until
  `reset_prefix_cache()`, so a sync without a reset samples the first token from stale weights;
- stop strings are matched in the generated text only; the finishing EOS / stop-token id is in
  `token_ids` (set `OMIT_STOP_TOKEN = True` to test a backend that must not rely on that);
- per-request `seed` drives one generator shared by the request's n samples;
- sleeping engines refuse to generate or load weights until `wake_up()`.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch

OMIT_STOP_TOKEN = False
ENGINES: list["LLM"] = []  # every engine built, for assertions


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 16
    skip_special_tokens: bool = True


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


class _Model:
    """What `apply_model` hands to its function: the engine's model with vLLM's `load_weights`."""

    def __init__(self, hf_model):
        self.hf = hf_model
        self.load_calls = 0

    def load_weights(self, weights) -> set[str]:
        params = dict(self.hf.named_parameters())
        tied = bool(getattr(self.hf.config, "tie_word_embeddings", False))
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if tied and name.startswith("lm_head."):
                    continue
                if name not in params:
                    raise KeyError(f"fake vLLM: no parameter {name!r} in the engine's model")
                if params[name].shape != tensor.shape:
                    raise ValueError(f"fake vLLM: {name} has shape {tuple(params[name].shape)}, got {tuple(tensor.shape)}")
                params[name].copy_(tensor)
                loaded.add(name)
        self.load_calls += 1
        return loaded


class LLM:
    def __init__(self, model: str, *, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.92, enable_prefix_caching: bool | None = None,
                 enable_sleep_mode: bool = False, max_model_len: int | None = None,
                 distributed_executor_backend: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.kwargs = dict(model=model, tokenizer=tokenizer, dtype=dtype, seed=seed,
                           gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching,
                           enable_sleep_mode=enable_sleep_mode, max_model_len=max_model_len,
                           distributed_executor_backend=distributed_executor_backend)
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval().requires_grad_(False)
        self.model = _Model(hf)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.enable_prefix_caching = enable_prefix_caching is not False
        self.enable_sleep_mode = enable_sleep_mode
        self.max_model_len = max_model_len
        self.prefix_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.asleep = False
        self.log: list[tuple[str, Any]] = []  # ("generate", n_requests) / ("load", n) / ("reset", None) / ...
        eos = hf.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        ENGINES.append(self)

    # -- weights and caches ---------------------------------------------------------------------
    def apply_model(self, func):
        if self.asleep:
            raise RuntimeError("fake vLLM: apply_model on a sleeping engine (wake_up first)")
        before = self.model.load_calls
        out = [func(self.model)]
        if self.model.load_calls != before:
            self.log.append(("load", len(out[0])))
        return out

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.prefix_cache.clear()
        self.log.append(("reset", None))
        return True

    def sleep(self, level: int = 1, mode: str = "abort"):
        if not self.enable_sleep_mode:
            raise RuntimeError("fake vLLM: sleep mode needs LLM(enable_sleep_mode=True)")
        self.asleep = True
        self.prefix_cache.clear()  # sleeping discards the KV cache
        self.log.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.asleep = False
        self.log.append(("wake", tags))
        return True

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
                 tokenization_kwargs=None, mm_processor_kwargs=None) -> list[RequestOutput]:
        if self.asleep:
            raise RuntimeError("fake vLLM: generate on a sleeping engine (wake_up first)")
        prompts = list(prompts)
        sps = sampling_params if isinstance(sampling_params, (list, tuple)) else [sampling_params or SamplingParams()] * len(prompts)
        if len(sps) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        self.log.append(("generate", [(list(p["prompt_token_ids"]), sp) for p, sp in zip(prompts, sps)]))
        out = []
        for r, (prompt, sp) in enumerate(zip(prompts, sps)):
            ids = list(prompt["prompt_token_ids"])
            if self.max_model_len is not None and len(ids) + (sp.max_tokens or 0) > self.max_model_len:
                raise ValueError(f"fake vLLM: prompt ({len(ids)}) + max_tokens exceeds max_model_len {self.max_model_len}")
            gen = torch.Generator().manual_seed(sp.seed if sp.seed is not None else 0)
            completions = [self._complete(ids, sp, gen, j) for j in range(sp.n)]
            out.append(RequestOutput(str(r), None, ids, None, completions, True))
        return out

    def _first_logits(self, ids: list[int]) -> torch.Tensor:
        key = tuple(ids)
        if self.enable_prefix_caching and key in self.prefix_cache:
            return self.prefix_cache[key]
        logits = self.model.hf(torch.tensor([ids])).logits[0, -1].float()
        if self.enable_prefix_caching:
            self.prefix_cache[key] = logits
        return logits

    def _complete(self, prompt_ids: list[int], sp: SamplingParams, gen: torch.Generator, index: int) -> CompletionOutput:
        stops = [sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])
        stop_ids = set(sp.stop_token_ids or []) | self.eos_ids
        out: list[int] = []
        finish, reason = "length", None
        for step in range(sp.max_tokens or 16):
            logits = self._first_logits(prompt_ids) if step == 0 else \
                self.model.hf(torch.tensor([prompt_ids + out])).logits[0, -1].float()
            tok = self._pick(logits, sp, gen)
            if tok in stop_ids:
                finish, reason = "stop", (tok if tok in set(sp.stop_token_ids or []) else None)
                if not OMIT_STOP_TOKEN:
                    out.append(tok)
                break
            out.append(tok)
            text = self.tokenizer.decode(out, skip_special_tokens=sp.skip_special_tokens)
            hit = next((s for s in stops if s and s in text), None)
            if hit is not None:
                finish, reason = "stop", hit
                break
        text = self.tokenizer.decode(out, skip_special_tokens=sp.skip_special_tokens)
        if isinstance(reason, str):
            text = text[: text.find(reason)]
        return CompletionOutput(index, text, out, None, None, finish, reason)

    @staticmethod
    def _pick(logits: torch.Tensor, sp: SamplingParams, gen: torch.Generator) -> int:
        if sp.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / sp.temperature, dim=-1)
        if sp.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < sp.top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[order[keep]] = True
            probs = torch.where(mask, probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        return int(torch.multinomial(probs, 1, generator=gen))


def install(monkeypatch) -> types.ModuleType:
    """Make `import vllm` return this fake and let the backend believe a GPU is present."""
    import harness.vllm_backend as vb

    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vb, "cuda_available", lambda: True)
    monkeypatch.setattr(module, "OMIT_STOP_TOKEN", False)
    ENGINES.clear()
    vb.clear_engines()
    monkeypatch.setattr(vb, "_ENGINES", {})
    return module
