"""Text generation behind a small backend interface.

The training stage (on-policy rollouts, teacher generations) and the evaluation pipeline both call
`GenerationBackend.generate`. `HFGenerationBackend` is the default: batched `model.generate` with a
KV cache, left padding, prompts bucketed by length, and per-sequence early stop on EOS or stop strings.

`harness.vllm_backend.VLLMGenerationBackend` implements the same contract on a colocated vLLM
engine (GPU only), with the same prompt encoding (`encode_prompts`) and stop handling
(`truncate_at_stop`) so the two backends hand the training stage identical sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import torch

from harness.batch_sizing import BatchSetting, resolve_batch_size

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int = 0
    max_prompt_tokens: int | None = None

    def as_dict(self) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(self.stop),
            "n": self.n,
            "seed": self.seed,
            "max_prompt_tokens": self.max_prompt_tokens,
        }


@dataclass
class GenerationOutput:
    """One completion. `token_ids` are the generated ids kept for training: up to and including the
    stop string's tokens or the EOS token; `text` is cut before the stop string."""

    prompt: str
    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    finish_reason: FinishReason
    sample_index: int = 0
    extra: dict = field(default_factory=dict)


class GenerationBackend(Protocol):
    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[GenerationOutput]:
        """Return `len(prompts) * params.n` outputs, grouped by prompt (prompt-major order)."""
        ...


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int | None) -> list[list[int]]:
    """Token ids of already-rendered prompts (chat template applied upstream, so no extra specials).

    Over-long prompts are cut from the left so the question's end and the generation prompt survive.
    """
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_prompt_tokens is not None:
        ids = [x[-max_prompt_tokens:] for x in ids]
    return ids


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a [B, L] batch plus attention mask."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            input_ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return input_ids, mask


def truncate_at_stop(tokenizer, ids: list[int], stop: Sequence[str], eos_ids: set[int]) -> tuple[str, list[int], FinishReason]:
    """Cut a generated id list at EOS or at the earliest stop string.

    Returns the visible text (before the stop string), the ids to keep (through the token that
    completed the stop string, or through EOS) and why it ended.
    """
    for k, tok in enumerate(ids):
        if tok in eos_ids:
            text = tokenizer.decode(ids[:k], skip_special_tokens=True)
            cut = _first_stop(text, stop)
            if cut is None:
                return text, ids[: k + 1], "eos"
            ids = ids[:k]
            break
    if stop:
        full = tokenizer.decode(ids, skip_special_tokens=True)
        cut = _first_stop(full, stop)
        if cut is not None:
            # The shortest prefix of ids whose text reaches the end of the stop string.
            pos, s = cut
            end = pos + len(s)
            lo, hi = 1, len(ids)
            while lo < hi:
                mid = (lo + hi) // 2
                if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= end:
                    hi = mid
                else:
                    lo = mid + 1
            return full[:pos], ids[:lo], "stop"
    return tokenizer.decode(ids, skip_special_tokens=True), ids, "length"


def _first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def eos_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    cfg_eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
    for val in (cfg_eos, tokenizer.eos_token_id):
        if val is None:
            continue
        ids.update(val if isinstance(val, (list, tuple)) else [val])
    return ids


class HFGenerationBackend:
    """Batched Hugging Face generation: KV cache, left padding, length bucketing, stop strings.

    `batch_size`: rows per `model.generate` call, or `auto` to size each call's batches from the
    memory free when it starts (`harness.batch_sizing`). `setting` names the config field it came
    from, for error messages. A batch that runs out of CUDA memory is split in halves and retried
    (`oom_splits` counts the splits), down to one row.
    """

    def __init__(self, model, tokenizer, batch_size: BatchSetting = 8, progress: bool = False, desc: str = "generate",
                 setting: str = "batch_size"):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.desc = desc
        self.setting = setting
        self.generated_tokens = 0  # running count, for cost accounting
        self.last_batch_size: int | None = None  # what the latest plan used (`auto` resolved), for the record
        self.batch_sizes_used: set[int] = set()  # every size a plan used (the training stage records them)
        self.oom_splits = 0  # running count of batches split after running out of memory

    def generate(self, prompts: Sequence[str], params: GenerationParams) -> list[GenerationOutput]:
        plan = self.plan(prompts, params)
        done = self.generate_batches(prompts, params, range(len(plan)), plan=plan)
        return merge_batches(plan, done)

    def plan(self, prompts: Sequence[str], params: GenerationParams, *,
             agree: Callable[[int], int] | None = None) -> list[list[tuple[int, int]]]:
        """The generate calls `generate` makes, in order: each a list of (prompt index, sample index).

        Prompts are expanded for n samples, then bucketed by length so little compute goes to
        padding. A batch's outputs depend only on its own rows and its index (the sampling seed), so
        running any subset of these batches elsewhere (`generate_batches`, e.g. one share per rank)
        gives exactly the outputs `generate` would. `batch_size: auto` is resolved here, once per
        call, for the longest prompt of the call; `agree` makes the ranks of a group settle on one
        size (every rank must call `plan` then, as each needs the same plan).
        """
        lengths = [len(x) for x in encode_prompts(self.tokenizer, prompts, params.max_prompt_tokens)]
        jobs = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        size = resolve_batch_size(self.batch_size, self.model, longest_prompt_tokens=max(lengths, default=0),
                                  max_new_tokens=params.max_new_tokens, rows=len(jobs), setting=self.setting,
                                  agree=agree)
        self.last_batch_size = size
        self.batch_sizes_used.add(size)
        order = sorted(range(len(jobs)), key=lambda k: (lengths[jobs[k][0]], k))
        return [[jobs[k] for k in order[s : s + size]] for s in range(0, len(order), size)]

    @torch.no_grad()
    def generate_batches(self, prompts: Sequence[str], params: GenerationParams, batch_indices: Sequence[int], *,
                         plan: list[list[tuple[int, int]]] | None = None) -> list[list[GenerationOutput]]:
        """Run the batches `batch_indices` of `plan(prompts, params)`; one output list per batch, in
        the batch's row order."""
        tok = self.tokenizer
        plan = plan if plan is not None else self.plan(prompts, params)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos_ids = eos_token_ids(self.model, tok)
        prompt_ids = encode_prompts(tok, prompts, params.max_prompt_tokens)
        done: list[list[GenerationOutput]] = []
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        iterator = list(batch_indices)
        if self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=self.desc, leave=False, unit="batch")
        try:
            for b_idx in iterator:
                outs: list[GenerationOutput] = []
                for rows, ids in self._generate_with_backoff(plan[b_idx], prompt_ids, params, pad_id, eos_ids, device,
                                                             _batch_seed(params.seed, b_idx)):
                    for (i, j), gen_ids in zip(rows, ids):
                        text, kept, reason = truncate_at_stop(tok, gen_ids, params.stop, eos_ids)
                        self.generated_tokens += len(kept)
                        outs.append(GenerationOutput(
                            prompt=prompts[i], text=text, token_ids=kept, prompt_ids=list(prompt_ids[i]),
                            finish_reason=reason, sample_index=j,
                        ))
                done.append(outs)
        finally:
            self.model.train(was_training)
        return done

    def _generate_with_backoff(self, rows: list[tuple[int, int]], prompt_ids, params: GenerationParams, pad_id: int,
                               eos_ids: set[int], device, seed: int) -> list[tuple[list[tuple[int, int]], list[list[int]]]]:
        """`rows` generated in one `model.generate` call, or, when that runs out of CUDA memory, in
        halves (each retried the same way, down to one row). Returns (rows, generated ids) per call
        that succeeded, in row order, so every row comes back once and in place.

        A half is seeded from its parent's seed and its side, so a split batch samples reproducibly
        (though not what the unsplit batch would have: other batch mates, other draws).
        """
        try:
            return [(rows, self._generate_rows(rows, prompt_ids, params, pad_id, eos_ids, device, seed))]
        except torch.cuda.OutOfMemoryError as exc:
            message = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        # Out of the except block: the failed attempt's tensors (held by the traceback) are released
        # before the cache is emptied and the halves retried.
        _release_cuda_cache()
        if len(rows) == 1:
            raise torch.cuda.OutOfMemoryError(
                f"{self.setting}: a batch of one row ({len(prompt_ids[rows[0][0]])} prompt tokens + up to "
                f"{params.max_new_tokens} new) still runs out of memory ({message}), so no batch size fits: free "
                "device memory (no other model or process beside it, a lower vllm gpu_memory_utilization), lower the "
                "task's max_new_tokens or max_prompt_tokens, or use a device with more memory")
        self.oom_splits += 1
        half = (len(rows) + 1) // 2
        return [part for side, sub in enumerate((rows[:half], rows[half:]))
                for part in self._generate_with_backoff(sub, prompt_ids, params, pad_id, eos_ids, device,
                                                        _split_seed(seed, side))]

    def _generate_rows(self, rows: list[tuple[int, int]], prompt_ids, params: GenerationParams, pad_id: int,
                       eos_ids: set[int], device, seed: int) -> list[list[int]]:
        """One `model.generate` call over `rows`; each row's generated ids (trailing padding dropped)."""
        tok = self.tokenizer
        input_ids, mask = left_pad([prompt_ids[i] for i, _ in rows], pad_id)
        kwargs = dict(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids) or None,
            use_cache=True,
        )
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            # Seeded by the batch's place in the plan, not by who runs it.
            torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            # Not HF's `stop_strings`: it also matches text that ends the *prompt* (a ChatML
            # prompt ends in "\n", so a first "\n" token would stop at once on "\n\n").
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [StopOnStrings(tok, params.stop, prompt_width=input_ids.shape[1])])
        out = self.model.generate(**kwargs)
        gen = out[:, input_ids.shape[1]:].tolist()
        return [_strip_trailing_pad(g, pad_id, eos_ids) for g in gen]


def merge_batches(plan: list[list[tuple[int, int]]], done: Sequence[Sequence[GenerationOutput]]) -> list[GenerationOutput]:
    """Every batch's outputs (`done[b]` for `plan[b]`) back in `generate`'s order: prompt-major, n per prompt."""
    if len(done) != len(plan):
        raise ValueError(f"{len(done)} batches of outputs for a plan of {len(plan)}")
    by_job: dict[tuple[int, int], GenerationOutput] = {}
    for batch, outs in zip(plan, done):
        by_job.update(zip(batch, outs))
    return [by_job[job] for job in sorted(by_job)]


class StopOnStrings:
    """Stopping criterion that looks for stop strings in each row's *generated* text only."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int, window: int = 32):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.prompt_width = prompt_width
        self.window = window  # tail tokens decoded per step; ample for stop strings of a few characters

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width:]
        texts = self.tokenizer.batch_decode(generated[:, -self.window:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], dtype=torch.bool, device=input_ids.device)


def _strip_trailing_pad(ids: list[int], pad_id: int, eos_ids: set[int]) -> list[int]:
    """Drop the padding `generate` appends after a finished sequence, keeping the first EOS.

    When pad == eos (SmolLM2, Qwen), the first EOS is real and the rest are padding.
    """
    for k, t in enumerate(ids):
        if t in eos_ids:
            return ids[: k + 1]
    if pad_id not in eos_ids:
        while ids and ids[-1] == pad_id:
            ids = ids[:-1]
    return ids


def _batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index * 7919) % (2**31 - 1)


def _release_cuda_cache() -> None:
    """Return the failed attempt's cached blocks to the driver, so the halves start from a clean pool."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _split_seed(seed: int, side: int) -> int:
    """The seed of one half (side 0 or 1) of a batch split after an out-of-memory error."""
    return (seed * 31 + 1 + side) % (2**31 - 1)


def ceil_div(a: int, b: int) -> int:
    return int(math.ceil(a / b))
