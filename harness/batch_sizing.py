"""How many rows one `model.generate` call can hold, from the memory free right now (`batch_size: auto`).

A fixed generation batch is wrong at both ends: batch 8 leaves most of an 80 GB GPU idle when
decoding a 0.5B student, and batch 256 can run a 7B teacher out of memory. `auto` asks the device how
much memory is free once the model is loaded and divides it by what one row costs:

- the KV cache: 2 (keys and values) x layers x kv_heads x head_dim x dtype bytes per token, for the
  longest prompt in the call plus `max_new_tokens` (GQA models keep `num_key_value_heads` < heads,
  so their rows are cheaper);
- the per-step logits and sampling temporaries: vocab x 4 bytes (fp32) x `LOGITS_FP32_COPIES`;
- the prefill's transient activations, one layer at a time (no autograd keeps them): the MLP's
  gate/up projections and a few hidden-size buffers per prompt token, plus the attention score
  matrix when the model's attention materializes it (`eager`; SDPA/flash kernels do not).

`auto_batch_size` is the pure arithmetic (unit-tested with hand-made numbers); `resolve_batch_size`
reads the free memory and the model's geometry and calls it. Both the evaluation (`eval.batch_size`)
and the training stage (`train.generation_batch_size`) may use this module, so it imports neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

AUTO: Literal["auto"] = "auto"
BatchSetting = int | Literal["auto"]

# Beyond this many rows a decode step is compute-bound on current GPUs, and a batch waits for its
# longest completion, so wider batches mostly add padding; also bounds a wrong free-memory reading.
AUTO_MAX_BATCH = 256
# Share of the free memory `auto` plans to use. CUDA: the rest absorbs allocator fragmentation,
# cuBLAS workspaces and the KV cache's growth-by-concatenation. Host RAM is shared with every other
# process on the machine and the reading moves while they run, so only half is planned there.
CUDA_SAFETY = 0.8
HOST_SAFETY = 0.5
# fp32 vocab-wide buffers alive at one decode step: the logits cast to fp32, the processed copy
# (temperature), top-p's sort (values + int64 indices = 3 fp32 widths), softmax and its cumulative sum.
LOGITS_FP32_COPIES = 8
# Per prompt token in a prefill layer, besides the MLP's two intermediate-width projections: the
# residual, the normed input, attention output and the MLP's output, each hidden-wide.
PREFILL_HIDDEN_BUFFERS = 4
# When the free memory cannot be read (a host without /proc/meminfo and without psutil), `auto`
# falls back to the default fixed batch rather than guessing.
FALLBACK_BATCH = 8


@dataclass(frozen=True)
class ModelGeometry:
    """What a generated row costs depends on these (from the model's config and parameter dtype)."""

    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    dtype_bytes: int
    attention_scores_materialized: bool = False

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


def row_bytes(geometry: ModelGeometry, prompt_tokens: int, max_new_tokens: int) -> int:
    """Bytes one row adds to a generate call: its KV cache at full length, the decode step's logits
    temporaries and the prefill's per-layer activations. The prefill and the full-length cache do not
    peak at the same moment; they are summed anyway, an upper bound, so the estimate errs on the
    side of fitting (a batch too small costs speed, one too large costs a retry)."""
    g = geometry
    kv = g.kv_bytes_per_token() * (prompt_tokens + max_new_tokens)
    logits = g.vocab * 4 * LOGITS_FP32_COPIES
    prefill = prompt_tokens * (2 * g.intermediate + PREFILL_HIDDEN_BUFFERS * g.hidden) * g.dtype_bytes
    if g.attention_scores_materialized:
        prefill += g.attention_heads * prompt_tokens * prompt_tokens * 4  # fp32 softmax over the scores
    return kv + logits + prefill


def auto_batch_size(free_bytes: int, geometry: ModelGeometry, longest_prompt_tokens: int, max_new_tokens: int,
                    rows: int, *, safety: float, cap: int = AUTO_MAX_BATCH) -> int:
    """Rows per generate call: `safety x free_bytes` over one row's cost (`row_bytes` at the longest
    prompt of the call), at least 1, at most `rows` (the call's rows: prompts x samples) and `cap`.

    Pure: no device is queried, so every edge is testable with made-up numbers.
    """
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    per_row = row_bytes(geometry, max(0, longest_prompt_tokens), max(0, max_new_tokens))
    fits = math.floor(max(0, free_bytes) * safety / per_row) if per_row > 0 else cap
    return max(1, min(fits, cap, max(1, rows)))


def model_geometry(model: Any, setting: str = "batch_size") -> ModelGeometry:
    """The geometry of a loaded HF causal LM (PEFT wrappers and multimodal configs included).

    GQA: `num_key_value_heads` (absent on MHA configs: every head has its own keys and values);
    `head_dim` (absent or null on many configs: hidden_size / heads). A config without the basics
    cannot be sized: the error names `setting` and the fix (a fixed batch size).
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{setting}: auto needs a model with an HF config; give a fixed batch size (e.g. 8)")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def need(*names: str) -> int:
        for name in names:
            value = getattr(text, name, None)
            if isinstance(value, int) and value > 0:
                return value
        raise ValueError(f"{setting}: auto cannot size batches for this model: its config has no {names[0]} "
                         f"({type(text).__name__}); give a fixed batch size (e.g. 8) instead")

    layers = need("num_hidden_layers", "n_layer", "num_layers")
    heads = need("num_attention_heads", "n_head")
    hidden = need("hidden_size", "n_embd", "d_model")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    vocab = need("vocab_size")
    try:
        dtype = next(model.parameters()).dtype
    except (StopIteration, AttributeError, TypeError):
        dtype = torch.float32
    attn = getattr(text, "_attn_implementation", None) or getattr(config, "_attn_implementation", None)
    return ModelGeometry(layers=layers, attention_heads=heads, kv_heads=int(kv_heads), head_dim=int(head_dim),
                         hidden=hidden, intermediate=int(intermediate), vocab=vocab,
                         dtype_bytes=torch.empty((), dtype=dtype).element_size(),
                         attention_scores_materialized=attn == "eager")


def available_memory_bytes(device: torch.device) -> int | None:
    """Bytes a generate call on `device` can still allocate; None when they cannot be read.

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused (reserved but
    not allocated: reusable by the next call without asking the driver). Anything else (CPU, MPS):
    the host's available RAM, `MemAvailable` from /proc/meminfo, else psutil's (a dependency of
    accelerate), else None.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def safety_for(device: torch.device) -> float:
    return CUDA_SAFETY if device.type == "cuda" else HOST_SAFETY


def resolve_batch_size(setting_value: BatchSetting, model: Any, *, longest_prompt_tokens: int, max_new_tokens: int,
                       rows: int, setting: str = "batch_size",
                       agree: Callable[[int], int] | None = None) -> int:
    """The batch size one generate call uses: a fixed int as given; `auto` from the memory free now.

    `agree` (e.g. `harness.ranks.Shards.minimum`) turns this process's answer into the group's
    (the minimum over ranks), so every rank builds the same batch plan; it is called only for
    `auto` (a fixed size is already the same everywhere).
    """
    if setting_value != AUTO:
        if not isinstance(setting_value, int) or isinstance(setting_value, bool) or setting_value < 1:
            raise ValueError(f"{setting}: give a positive integer or `auto`, got {setting_value!r}")
        return setting_value
    try:
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError, TypeError):
            device = torch.device("cpu")
        free = available_memory_bytes(device)
        if free is None:
            size = min(FALLBACK_BATCH, max(1, rows))
        else:
            size = auto_batch_size(free, model_geometry(model, setting), longest_prompt_tokens, max_new_tokens, rows,
                                   safety=safety_for(device))
    except Exception:
        if agree is not None:
            agree(0)  # the other ranks wait in the same exchange: let them through (and fail), then fail here
        raise
    if agree is None:
        return size
    agreed = agree(size)
    if agreed < 1:
        raise RuntimeError(f"{setting}: another rank could not size its generation batch (its own error says why)")
    return agreed
