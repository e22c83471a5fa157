"""Diversity diagnostics over a set of generated samples: distinct-n, self-BLEU, mean length.

Tokenisation is lower-cased words and punctuation (`\\w+|[^\\w\\s]`), so scores do not depend on
a model's tokenizer and are comparable across students. Undefined values (no n-grams, fewer than
two samples for self-BLEU) are NaN rather than a misleading 0.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[str], n: int) -> float:
    """Distinct n-grams / total n-grams over the whole set (Li et al. 2016, corpus level)."""
    grams = [g for s in samples for g in ngrams(tokenize(s), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
         epsilon: float = 0.1) -> float:
    """Sentence BLEU with uniform weights and Chen & Cherry smoothing method 1.

    Modified n-gram precision clips each hypothesis n-gram count by its maximum count in any single
    reference; a zero precision becomes epsilon / (number of hypothesis n-grams); brevity penalty
    uses the reference length closest to the hypothesis length (shorter one on ties).
    Matches NLTK's `sentence_bleu(..., smoothing_function=SmoothingFunction().method1)`.
    """
    if not references:
        raise ValueError("BLEU needs at least one reference")
    max_ref: list[Counter] = []
    for n in range(1, max_n + 1):
        best: Counter = Counter()
        for ref in references:
            for gram, count in Counter(ngrams(ref, n)).items():
                if count > best[gram]:
                    best[gram] = count
        max_ref.append(best)
    hyp_counts = [Counter(ngrams(hypothesis, n)) for n in range(1, max_n + 1)]
    ref_lens = [len(r) for r in references]
    return _bleu_from_counts(hyp_counts, max_ref, len(hypothesis), ref_lens, epsilon)


def self_bleu(samples: Sequence[str], max_n: int = 4, max_samples: int | None = 500, seed: int = 0) -> float:
    """Mean BLEU of each sample against all the others as references (Zhu et al. 2018).

    High self-BLEU = low diversity. With more than `max_samples` samples a seeded random subset is
    used. The clipping counts exclude the hypothesis itself via a top-2 table per n-gram, so the
    cost is linear in the total number of n-grams rather than quadratic.
    """
    texts = list(samples)
    if max_samples is not None and len(texts) > max_samples:
        texts = random.Random(seed).sample(texts, max_samples)
    if len(texts) < 2:
        return float("nan")
    toks = [tokenize(t) for t in texts]
    counts = [[Counter(ngrams(t, n)) for n in range(1, max_n + 1)] for t in toks]
    # top[n][gram] = (best count, owner of best, second-best count)
    top: list[dict[tuple[str, ...], tuple[int, int, int]]] = [{} for _ in range(max_n)]
    for i, per_n in enumerate(counts):
        for n_idx, counter in enumerate(per_n):
            table = top[n_idx]
            for gram, c in counter.items():
                best, owner, second = table.get(gram, (0, -1, 0))
                if c > best:
                    table[gram] = (c, i, best)
                elif c > second:
                    table[gram] = (best, owner, c)
    lengths = [len(t) for t in toks]
    total = 0.0
    for i, per_n in enumerate(counts):
        max_ref = []
        for n_idx, counter in enumerate(per_n):
            table = top[n_idx]
            clip = Counter()
            for gram in counter:
                best, owner, second = table[gram]
                clip[gram] = second if owner == i else best
            max_ref.append(clip)
        ref_lens = lengths[:i] + lengths[i + 1:]
        total += _bleu_from_counts(per_n, max_ref, lengths[i], ref_lens, 0.1)
    return total / len(toks)


def mean_length(samples: Sequence[str], token_lengths: Sequence[int] | None = None) -> float:
    """Mean length in model tokens when `token_lengths` is given, else in words (`tokenize`)."""
    lengths = list(token_lengths) if token_lengths is not None else [len(tokenize(s)) for s in samples]
    return sum(lengths) / len(lengths) if lengths else float("nan")


def diversity_metrics(samples: Sequence[str], token_lengths: Sequence[int] | None = None,
                      max_samples: int | None = 500, seed: int = 0) -> dict[str, float]:
    """The diagnostics keys of DESIGN.md: distinct_1, distinct_2, self_bleu, mean_length."""
    return {
        "distinct_1": distinct_n(samples, 1),
        "distinct_2": distinct_n(samples, 2),
        "self_bleu": self_bleu(samples, max_samples=max_samples, seed=seed),
        "mean_length": mean_length(samples, token_lengths),
    }


def _bleu_from_counts(hyp_counts: Sequence[Counter], max_ref: Sequence[Counter], hyp_len: int,
                      ref_lens: Sequence[int], epsilon: float) -> float:
    if hyp_len == 0:
        return 0.0
    log_sum = 0.0
    for n_idx, (hyp, ref) in enumerate(zip(hyp_counts, max_ref)):
        matched = sum(min(c, ref.get(g, 0)) for g, c in hyp.items())
        denom = max(1, sum(hyp.values()))
        if n_idx == 0 and matched == 0:
            return 0.0  # no unigram overlap at all: BLEU is 0 whatever the smoothing (as NLTK)
        precision = matched / denom if matched else epsilon / denom
        log_sum += math.log(precision)
    closest = min(ref_lens, key=lambda r: (abs(r - hyp_len), r))
    bp = 1.0 if hyp_len > closest else (math.exp(1 - closest / hyp_len) if closest else 1.0)
    return bp * math.exp(log_sum / len(hyp_counts))
