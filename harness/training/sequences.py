"""Build training sequences from an objective's declared source.

ground_truth: prompt + reference response + EOS.
teacher:      prompt + a teacher generation (generated once per prompt and cached on disk, so every
              objective and seed of a suite trains on the same teacher text).
student:      prompt + an on-policy rollout of the current student (T / top-p from the train config).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.generation import GenerationBackend, GenerationParams, encode_prompts
from harness.io import append_jsonl, iter_jsonl
from harness.modeling.batching import TokenSequence
from objectives.base import SequenceSource


@dataclass
class SequenceCounters:
    """Cost accounting for equal-budget comparisons."""

    generated_tokens: int = 0
    teacher_generated_tokens: int = 0
    teacher_cache_hits: int = 0


class TeacherGenerationCache:
    """Teacher completions keyed by (teacher identity, rendered prompt, decoding params).

    Stored as JSONL so concurrent appenders never corrupt each other and a torn line is ignored.
    """

    def __init__(self, path: Path, teacher_key: str):
        self.path = path
        self.teacher_key = teacher_key
        self._mem: dict[str, list[int]] = {}
        if path.exists():
            for row in iter_jsonl(path):
                self._mem[row["key"]] = row["completion_ids"]

    def key(self, prompt: str, params: GenerationParams) -> str:
        blob = json.dumps([self.teacher_key, prompt, params.as_dict()], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> list[int] | None:
        return self._mem.get(key)

    def put(self, key: str, completion_ids: list[int]) -> None:
        self._mem[key] = completion_ids
        append_jsonl(self.path, {"key": key, "completion_ids": completion_ids})


@dataclass
class SequenceBuilder:
    tokenizer: object
    render: "callable"  # Example -> rendered prompt text (chat template applied)
    max_prompt_tokens: int
    max_response_tokens: int
    rollout: GenerationParams
    student_backend: GenerationBackend | None = None
    teacher_backend: GenerationBackend | None = None
    teacher_cache: TeacherGenerationCache | None = None
    counters: SequenceCounters = field(default_factory=SequenceCounters)

    def build(self, examples: Sequence, source: SequenceSource, seed: int) -> list[TokenSequence]:
        prompts = [self.render(ex) for ex in examples]
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.max_prompt_tokens)
        if source == SequenceSource.GROUND_TRUTH:
            completions = [self._reference_ids(ex) for ex in examples]
        elif source == SequenceSource.STUDENT:
            completions = self._generate(self.student_backend, prompts, seed, "student")
        elif source == SequenceSource.TEACHER:
            completions = self._teacher_completions(prompts, seed)
        else:  # pragma: no cover - enum is closed
            raise ValueError(f"unknown sequence source {source!r}")
        return [TokenSequence(tuple(p), tuple(c)) for p, c in zip(prompt_ids, completions)]

    def _reference_ids(self, ex) -> list[int]:
        response = getattr(ex, "response", None)
        if not response:
            raise ValueError(f"example {getattr(ex, 'id', '?')} has no ground-truth response; this objective needs one")
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.max_response_tokens:
            return ids[: self.max_response_tokens]
        return ids + [self.tokenizer.eos_token_id]

    def _generate(self, backend, prompts: list[str], seed: int, who: str) -> list[list[int]]:
        if backend is None:
            raise RuntimeError(f"this objective needs {who}-generated sequences but no {who} generation backend is set")
        params = GenerationParams(**{**self.rollout.as_dict(), "stop": tuple(self.rollout.stop), "seed": seed})
        outs = backend.generate(prompts, params)
        ids = [o.token_ids or [self.tokenizer.eos_token_id] for o in outs]
        self.counters.generated_tokens += sum(len(x) for x in ids)
        return ids

    def _teacher_completions(self, prompts: list[str], seed: int) -> list[list[int]]:
        cache = self.teacher_cache
        if cache is None:
            ids = self._generate(self.teacher_backend, prompts, seed, "teacher")
            self.counters.teacher_generated_tokens += sum(len(x) for x in ids)
            return ids
        keys = [cache.key(p, self.rollout) for p in prompts]
        missing = [i for i, k in enumerate(keys) if cache.get(k) is None]
        self.counters.teacher_cache_hits += len(prompts) - len(missing)
        if missing:
            fresh = self._generate(self.teacher_backend, [prompts[i] for i in missing], seed, "teacher")
            self.counters.teacher_generated_tokens += sum(len(x) for x in fresh)
            for i, ids in zip(missing, fresh):
                cache.put(keys[i], ids)
        return [cache.get(k) for k in keys]
