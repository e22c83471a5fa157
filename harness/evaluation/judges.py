"""Pairwise judges for summaries: which of two summaries of a dialogue is better.

All judges share one interface, `judge(dialogue, summary_a, summary_b, references=()) -> Verdict`:
- `RougeJudge`: offline and deterministic (multi-reference ROUGE-L F against the references);
- `HFModelJudge`: a local transformers model prompted with the criteria in `judge_prompts.yaml`;
- `OpenAICompatibleJudge`: any OpenAI-compatible `/v1/chat/completions` server, standard library
  only, with retries and exponential backoff.
A reply that does not clearly say A, B or tie is "malformed" (counted, never guessed).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import yaml

from harness.errors import DistillBenchError
from harness.evaluation.rouge import make_scorer, multi_ref_rouge

Verdict = Literal["A", "B", "tie", "malformed"]
PROMPTS_YAML = Path(__file__).with_name("judge_prompts.yaml")


class JudgeError(DistillBenchError):
    """The judge could not be reached or refused the request (not a malformed verdict)."""


@runtime_checkable
class Judge(Protocol):
    def judge(self, dialogue: str, summary_a: str, summary_b: str, references: Sequence[str] = ()) -> Verdict:
        """Which summary is better: "A", "B", "tie", or "malformed" when the judge's reply is unusable."""
        ...


@dataclass(frozen=True)
class JudgePrompt:
    system: str
    user: str
    answer_prefix: str

    def render_user(self, dialogue: str, summary_a: str, summary_b: str) -> str:
        return self.user.format(dialogue=dialogue.strip(), summary_a=summary_a.strip(), summary_b=summary_b.strip())


@lru_cache(maxsize=None)
def load_judge_prompt(path: str | Path = PROMPTS_YAML, key: str = "pairwise") -> JudgePrompt:
    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))[key]
    return JudgePrompt(system=spec["system"].strip(), user=spec["user"], answer_prefix=spec.get("answer_prefix", ""))


# ---------------------------------------------------------------- verdict parsing

_SINGLE_TOKEN = re.compile(r"^\W*(?i:summary\s*)?(a|b|tie)\W*$", re.IGNORECASE)
_LEADING = re.compile(
    r"^[\s*_`\"'(\[]*(?:(?i:summary|option|answer|verdict|winner)\s*[:\-]?\s*)?[*_`\"'(\[]*"
    r"(A|B|(?i:tie|draw|equal))(?![A-Za-z0-9])"
)
_BRACKETED = re.compile(r"\[\[\s*(A|B|(?i:tie))\s*\]\]")
_DECLARED = re.compile(
    r"(?i:verdict|final answer|answer|winner|choice|better summary)\s*(?i:is|:|=|-)?\s*[*_`\"'(\[]*"
    r"(?i:summary\s+)?(A|B|(?i:tie))(?![A-Za-z0-9])"
)
_IS_BETTER = re.compile(r"(?:(?i:summary|option)\s+)?\b(A|B)\s+(?i:is\s+(?:better|superior|preferred)|wins)")
_TIE_PHRASE = re.compile(r"(?i)\b(?:a tie|equally (?:good|bad)|both (?:summaries )?are (?:equally|equal))\b")


def parse_verdict(reply: str | None) -> Verdict:
    """Map a judge's free-text reply to a verdict; anything ambiguous is "malformed".

    Accepted: a one-token reply (any case); a reply that starts with A / B / tie (optionally after
    "Summary", "Verdict:" ..., markdown emphasis or brackets) unless a later declaration contradicts
    it; "[[A]]", "Verdict: B", "Summary A is better", "it's a tie".
    A and B must be upper-case outside those forms so that the article "a" is never read as a vote.
    """
    if not reply or not reply.strip():
        return "malformed"
    text = reply.strip()
    single = _SINGLE_TOKEN.match(text)
    if single:  # the whole reply is one token: case does not matter
        return _canonical(single.group(1).upper() if len(single.group(1)) == 1 else single.group(1))
    first_line = text.splitlines()[0]
    names_both = re.search(r"\bA\b", first_line) and re.search(r"\bB\b", first_line)
    declared = {_canonical(m.group(1)) for p in (_BRACKETED, _DECLARED) for m in p.finditer(text)}
    leading = _LEADING.match(text)
    if leading and not names_both:  # "A and B ..." is not a vote for A
        verdict = _canonical(leading.group(1))
        return verdict if declared <= {verdict} else "malformed"  # "Verdict: A ... Final answer: B"
    for pattern in (_BRACKETED, _DECLARED, _IS_BETTER):
        found = {_canonical(m.group(1)) for m in pattern.finditer(text)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return "malformed"  # contradictory declarations
    if _TIE_PHRASE.search(text):
        return "tie"
    return "malformed"


def _canonical(token: str) -> Verdict:
    return token if token in ("A", "B") else "tie"  # type: ignore[return-value]


# ---------------------------------------------------------------- ROUGE judge


class RougeJudge:
    """Prefers the summary with the higher multi-reference ROUGE-L F; tie when |difference| < eps."""

    def __init__(self, eps: float = 1e-3, use_stemmer: bool = True) -> None:
        self.eps = eps
        self._scorer = make_scorer(use_stemmer=use_stemmer)

    def judge(self, dialogue: str, summary_a: str, summary_b: str, references: Sequence[str] = ()) -> Verdict:
        if not references:
            raise ValueError("RougeJudge needs the dialogue's reference summaries (references=...)")
        score_a = multi_ref_rouge(self._scorer, summary_a, references)["rougeL"]
        score_b = multi_ref_rouge(self._scorer, summary_b, references)["rougeL"]
        if abs(score_a - score_b) < self.eps:
            return "tie"
        return "A" if score_a > score_b else "B"

    def describe(self) -> dict[str, Any]:
        return {"judge": "rouge", "metric": "rougeL_f_max_over_references", "eps": self.eps}


# ---------------------------------------------------------------- local model judge


class HFModelJudge:
    """A local transformers causal LM as judge: greedy, a few new tokens, parsed with `parse_verdict`."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 8, use_chat_template: bool | None = None,
                 prompt: JudgePrompt | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt or load_judge_prompt()
        # Default: use the chat template when the tokenizer has one.
        self.use_chat_template = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None \
            else use_chat_template
        self.last_reply: str | None = None

    def render(self, dialogue: str, summary_a: str, summary_b: str) -> str:
        user = self.prompt.render_user(dialogue, summary_a, summary_b)
        if self.use_chat_template:
            messages = [{"role": "system", "content": self.prompt.system}, {"role": "user", "content": user}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{self.prompt.system}\n\n{user}\n{self.prompt.answer_prefix}"

    def judge(self, dialogue: str, summary_a: str, summary_b: str, references: Sequence[str] = ()) -> Verdict:
        import torch

        text = self.render(dialogue, summary_a, summary_b)
        # The chat template already contains the special tokens; do not add them twice.
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.use_chat_template)
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id)
        self.last_reply = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return parse_verdict(self.last_reply)

    def describe(self) -> dict[str, Any]:
        name = getattr(getattr(self.model, "config", None), "_name_or_path", None) or type(self.model).__name__
        return {"judge": "hf_model", "model": name, "max_new_tokens": self.max_new_tokens,
                "chat_template": self.use_chat_template}


# ---------------------------------------------------------------- OpenAI-compatible HTTP judge

_RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


class OpenAICompatibleJudge:
    """Judge served by an OpenAI-compatible endpoint (`POST {base_url}/v1/chat/completions`).

    Standard library only. Retries with exponential backoff (`backoff * 2**attempt`, or the server's
    Retry-After when given, plus jitter) on 429/5xx/timeouts/connection errors; other HTTP errors
    and exhausted retries raise `JudgeError`, because a dead judge must not silently turn every item
    into "malformed". A reply that is not valid JSON or has no message content is "malformed".
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_tokens: int = 8,
        prompt: JudgePrompt | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.prompt = prompt or load_judge_prompt()
        self._sleep = sleep
        # A local server must never be reached through an HTTP(S)_PROXY from the environment.
        host = urllib.parse.urlsplit(self.url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(host) else []
        self._opener = urllib.request.build_opener(*handlers)
        self._rng = random.Random(0)
        self.last_reply: str | None = None
        self.attempts = 0  # total HTTP attempts, for telemetry and tests

    def judge(self, dialogue: str, summary_a: str, summary_b: str, references: Sequence[str] = ()) -> Verdict:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt.system},
                {"role": "user", "content": self.prompt.render_user(dialogue, summary_a, summary_b)},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        raw = self._post(body)
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            self.last_reply = raw.decode("utf-8", "replace")[:500]
            return "malformed"
        self.last_reply = content if isinstance(content, str) else None
        return parse_verdict(self.last_reply)

    def describe(self) -> dict[str, Any]:
        return {"judge": "openai_compatible", "url": self.url, "model": self.model, "max_tokens": self.max_tokens}

    def ping(self, timeout: float = 10.0) -> None:
        """One cheap request (a 1-token completion, no retries): raises JudgeError unless the endpoint,
        key and model answer. Preflight calls this so a dead judge fails before any generation."""
        saved = (self.max_retries, self.timeout)
        self.max_retries, self.timeout = 0, timeout
        try:
            self._post({"model": self.model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1})
        finally:
            self.max_retries, self.timeout = saved

    def _post(self, body: dict) -> bytes:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:  # local servers usually need no key
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        last_error = ""
        for attempt in range(self.max_retries + 1):
            self.attempts += 1
            retry_after: float | None = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with self._opener.open(req, timeout=self.timeout) as resp:
                    return resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code not in _RETRY_STATUS:
                    raise JudgeError(f"judge at {self.url} answered HTTP {exc.code}: {detail}") from exc
                last_error = f"HTTP {exc.code}: {detail}"
                retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_retries:
                delay = retry_after if retry_after is not None else self.backoff * 2**attempt
                self._sleep(delay * (1.0 + 0.1 * self._rng.random()))
        raise JudgeError(f"judge at {self.url} failed after {self.max_retries + 1} attempts; last error: {last_error}")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header, capped at 120; None (use our own backoff) when the
    header is absent or not a finite non-negative number: `-1` or `nan` would crash time.sleep, and
    an HTTP-date form is rare enough for judges that the backoff is a fine answer to it."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, 120.0)
