"""vLLM generation colocated with training: one engine per process, fed the student's weights.

Supported version: vllm==0.33.0 (the `vllm` extra pins it). The surface called here, and nothing
else, is what `tests/fake_vllm.py` mirrors for the CPU tests:

    LLM(model=, tokenizer=, dtype=, seed=, gpu_memory_utilization=, enable_prefix_caching=,
        enable_sleep_mode=, max_model_len=, distributed_executor_backend=)
    LLM.generate([TokensPrompt(prompt_token_ids=ids)], [SamplingParams(...) per request], use_tqdm=)
        -> [RequestOutput(prompt_token_ids, outputs=[CompletionOutput(index, token_ids, finish_reason, stop_reason)])]
    SamplingParams(n, temperature, top_p, top_k, max_tokens, seed, stop, stop_token_ids)
    LLM.apply_model(fn)  -> fn(model) in each worker; we call model.load_weights([(hf_name, tensor)])
    LLM.reset_prefix_cache(), LLM.sleep(level=1), LLM.wake_up()

Weight sync follows TRL's `vllm_mode="colocate"`: after each optimizer step that precedes an
on-policy step, every parameter is pushed by its Hugging Face name (vLLM's `load_weights` maps HF
names onto its fused qkv / gate_up tensors and skips `lm_head` when embeddings are tied), then the
prefix cache is reset: prompts repeat across epochs, and KV blocks computed with the old weights
would otherwise be reused silently. Prompts go in as token ids from `encode_prompts` (the same cut
as the HF backend) and completions are cut by the same `truncate_at_stop`, so both backends give
the training stage identical prompt ids and stop handling.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Literal, Sequence

import torch

from harness.generation import GenerationOutput, GenerationParams, eos_token_ids, encode_prompts, truncate_at_stop

VLLM_VERSION = "0.33.0"
INSTALL_HINT = (f'install it on a CUDA machine with `pip install -e ".[vllm]"` (vllm=={VLLM_VERSION}), '
                "or set it to `hf`")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def vllm_unavailable_reason() -> str | None:
    """Why a vLLM backend cannot run in this process (None when it can). Checked at config time."""
    if not cuda_available():
        return "vLLM needs a CUDA GPU and none is visible (torch.cuda.is_available() is False)"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed"
    return None


def model_dir_of(model) -> str:
    """The checkpoint directory the engine loads its architecture (and tokenizer) from."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(getattr(base, "config", None), "_name_or_path", None) or getattr(base, "name_or_path", None)
    if not path or not os.path.isdir(path):
        raise ValueError(f"the vLLM backend loads the model's architecture from its local checkpoint directory, "
                         f"but this model's config names {path!r}; load it from a local directory (or use the hf backend)")
    return str(path)


def make_engine(model_dir: str, *, seed: int = 0, gpu_memory_utilization: float = 0.3, sleep: bool = False,
                max_model_len: int | None = None, world_size: int = 1):
    """A vLLM engine in this process (colocated with training on this process's GPU)."""
    # In-process engine core: `apply_model` then hands the weight tensors to the model directly
    # instead of pickling them to an engine subprocess.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    kwargs: dict[str, Any] = dict(model=model_dir, tokenizer=model_dir, dtype="bfloat16", seed=seed,
                                  gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
                                  enable_sleep_mode=sleep)
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if world_size > 1:
        # One independent engine per data-parallel rank, as TRL's colocate mode does under torchrun.
        kwargs["distributed_executor_backend"] = "external_launcher"
    return LLM(**kwargs)



class _Engine:
    """A cached engine and whether its weights may differ from its checkpoint's."""

    def __init__(self, llm):
        self.llm = llm
        self.synced = False


# One engine per (checkpoint, engine settings) per process: building one takes tens of seconds and
# vLLM does not reliably return its GPU memory when dropped, so a suite's cells (the rollouts of
# every trained cell and the evaluation of every student) share one engine for the student's
# architecture and one for the teacher's.
_ENGINES: dict[tuple, _Engine] = {}


def engine_for(model_dir: str, **settings) -> _Engine:
    key = (model_dir, *sorted((k, v) for k, v in settings.items() if k != "seed"))
    if key not in _ENGINES:
        _ENGINES[key] = _Engine(make_engine(model_dir, **settings))
    return _ENGINES[key]


def clear_engines() -> None:
    _ENGINES.clear()


@torch.no_grad()
def hf_named_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under plain Hugging Face names, LoRA adapters merged in (not in place).

    `named_parameters` lists a tied LM head once (as the embedding), which is what vLLM expects.
    For a PEFT model each LoRA layer's weight is base + delta, computed without touching the
    student (merge/unmerge in place would round the base weights a little on every sync).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue  # adapter factors: folded into their base weight below
        if ".base_layer." not in name:
            yield name, param.detach()
            continue
        owner_name, leaf = name.split(".base_layer.")
        owner = base.get_submodule(owner_name)
        value = param.detach()
        if leaf == "weight" and not getattr(owner, "merged", False):
            for adapter in getattr(owner, "active_adapters", ()):
                if adapter in getattr(owner, "lora_A", {}):
                    value = value + owner.get_delta_weight(adapter).to(value.dtype)
        yield f"{owner_name}.{leaf}", value


def request_seed(seed: int, index: int) -> int:
    """Per-request sampling seed: reproducible, distinct across prompts, independent of batching."""
    return (seed * 1_000_003 + index * 7919) % (2**31 - 1)


class VLLMGenerationBackend:
    """The `GenerationBackend` contract on a colocated vLLM engine."""

    def __init__(self, llm, tokenizer, eos_ids: set[int], *, sleep: bool = False, progress: bool = False,
                 desc: str = "generate", engine: _Engine | None = None):
        self.llm = llm
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.sleep = sleep
        self.progress = progress
        self.desc = desc
        self.generated_tokens = 0
        self.syncs = 0  # weight pushes so far (telemetry and tests)
        self._asleep = False

    @classmethod
    def for_model(cls, model, tokenizer, *, gpu_memory_utilization: float, sleep: bool = False,
                  max_model_len: int | None = None, seed: int = 0, world_size: int = 1,
                  sync: Literal["now", "checkpoint", "caller"] = "now", progress: bool = False,
                  desc: str = "generate") -> "VLLMGenerationBackend":
        """A backend on the engine for `model`'s architecture.

        sync: `now` pushes the in-memory weights at once (a trained model); `checkpoint` means the
        model's weights are its checkpoint's (a teacher, an untrained baseline), so only an engine
        that other weights were pushed into is synced; `caller`: the caller syncs before generating
        (the training loop, before every on-policy step).
        """
        engine = engine_for(model_dir_of(model), seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                            sleep=sleep, max_model_len=max_model_len, world_size=world_size)
        backend = cls(engine.llm, tokenizer, eos_token_ids(model, tokenizer), sleep=sleep, progress=progress,
                      desc=desc, engine=engine)
        if sync == "now" or (sync == "checkpoint" and engine.synced):
            backend.sync_weights(model)
        return backend

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _rest(self) -> None:
        # Level 1 keeps the weights (offloaded to CPU) and frees the KV cache for the training phase.
        if self.sleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def sync_weights(self, model) -> int:
        """Push `model`'s current weights into the engine and drop every cached prefix; returns the tensor count."""
        self._wake()
        weights = list(hf_named_weights(model))
        self.llm.apply_model(lambda vllm_model: vllm_model.load_weights(weights))
        self.llm.reset_prefix_cache()
        self.syncs += 1
        if self.engine is not None:
            self.engine.synced = True
        self._rest()
        return len(weights)

    def sampling_params(self, params: GenerationParams, index: int):
        from vllm import SamplingParams

        sampled = params.temperature > 0
        return SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p if sampled else 1.0, top_k=0,
            max_tokens=params.max_new_tokens, seed=request_seed(params.seed, index),
            # vLLM stops early on these; `truncate_at_stop` then makes the cut exactly as the HF backend does.
            stop=[s for s in params.stop if s] or None, stop_token_ids=sorted(self.eos_ids) or None,
        )

    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[GenerationOutput]:
        return self.generate_requests(prompts, params, range(len(prompts)))

    def generate_requests(self, prompts: Sequence[str], params: GenerationParams,
                          request_indices: Sequence[int]) -> list[GenerationOutput]:
        """`generate` for a subset of a request list: `request_indices[i]` is `prompts[i]`'s position
        in the whole list, which seeds its sampling. A prompt's completions then depend on that
        position only, not on which other prompts share the call, so an evaluation split across
        ranks by prompt samples exactly what one process would (`harness.eval_runner.generate_shared`)."""
        from vllm import TokensPrompt

        if len(request_indices) != len(prompts):
            raise ValueError(f"{len(request_indices)} request indices for {len(prompts)} prompts")
        prompt_ids = encode_prompts(self.tokenizer, prompts, params.max_prompt_tokens)
        requests = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        sps = [self.sampling_params(params, index) for index in request_indices]
        self._wake()
        try:
            results = self.llm.generate(requests, sps, use_tqdm=self.progress)
        finally:
            self._rest()
        outs: list[GenerationOutput] = []
        for i, req in enumerate(results):
            for o in sorted(req.outputs, key=lambda c: c.index):
                ids = self._with_stop_token(list(o.token_ids), o)
                text, kept, reason = truncate_at_stop(self.tokenizer, ids, params.stop, self.eos_ids)
                self.generated_tokens += len(kept)
                outs.append(GenerationOutput(prompt=prompts[i], text=text, token_ids=kept, prompt_ids=list(prompt_ids[i]),
                                             finish_reason=reason, sample_index=o.index))
        if len(outs) != len(prompts) * params.n:
            raise RuntimeError(f"vLLM returned {len(outs)} completions for {len(prompts)} prompts x n={params.n}")
        return outs

    def _with_stop_token(self, ids: list[int], completion) -> list[int]:
        """The training stage keeps the EOS that ended a completion (the HF backend does); put it
        back if the engine left it out of `token_ids`."""
        stop = completion.stop_reason
        if completion.finish_reason != "stop" or isinstance(stop, str):
            return ids
        eos = stop if isinstance(stop, int) else min(self.eos_ids) if self.eos_ids else None
        if eos is not None and (not ids or ids[-1] not in self.eos_ids):
            ids.append(eos)
        return ids
