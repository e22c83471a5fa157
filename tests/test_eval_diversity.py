"""Diversity diagnostics: distinct-n, BLEU / self-BLEU (checked against NLTK), mean length."""

from __future__ import annotations

import math
import random

import pytest

from harness.evaluation.diversity import (
    bleu,
    distinct_n,
    diversity_metrics,
    mean_length,
    self_bleu,
    tokenize,
)


def test_distinct_n() -> None:
    samples = ["the cat sat", "the cat ran"]
    assert distinct_n(samples, 1) == pytest.approx(4 / 6)
    assert distinct_n(samples, 2) == pytest.approx(3 / 4)
    assert distinct_n(["same words", "same words"], 2) == 0.5
    assert math.isnan(distinct_n([""], 1))


def test_bleu_basics() -> None:
    sentence = tokenize("the quick brown fox jumps over the lazy dog")
    assert bleu(sentence, [sentence]) == pytest.approx(1.0)
    assert bleu(sentence, [tokenize("completely different words here")]) == 0.0
    assert 0.0 < bleu(tokenize("the quick brown fox sleeps"), [sentence]) < 1.0


def _random_sentences(rng: random.Random, count: int) -> list[str]:
    vocab = "the a cat dog sat ran on under mat tree quickly slowly big small red".split()
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14))) for _ in range(count)]


def test_bleu_agrees_with_nltk() -> None:
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    smooth = nltk_bleu.SmoothingFunction().method1
    rng = random.Random(7)
    for _ in range(60):
        hyp, *refs = [tokenize(s) for s in _random_sentences(rng, rng.randint(2, 4))]
        theirs = nltk_bleu.sentence_bleu(refs, hyp, smoothing_function=smooth)
        assert bleu(hyp, refs) == pytest.approx(theirs, abs=1e-9), (hyp, refs)


def test_self_bleu_matches_naive_definition() -> None:
    rng = random.Random(3)
    samples = _random_sentences(rng, 12)
    toks = [tokenize(s) for s in samples]
    naive = sum(bleu(t, toks[:i] + toks[i + 1:]) for i, t in enumerate(toks)) / len(toks)
    assert self_bleu(samples) == pytest.approx(naive, abs=1e-12)


def test_self_bleu_orders_diversity() -> None:
    same = ["the cat sat on the mat today"] * 5
    varied = ["the cat sat on the mat", "dogs run in parks", "rain falls on roofs at night",
              "my code compiles", "stocks fell sharply"]
    assert self_bleu(same) == pytest.approx(1.0)
    assert self_bleu(varied) < 0.2
    assert math.isnan(self_bleu(["only one"]))


def test_self_bleu_subsamples_with_seed() -> None:
    samples = _random_sentences(random.Random(0), 40)
    assert self_bleu(samples, max_samples=10, seed=1) == self_bleu(samples, max_samples=10, seed=1)


def test_mean_length_and_bundle() -> None:
    assert mean_length(["a b c", "d"]) == 2.0
    assert mean_length(["ignored"], token_lengths=[10, 20]) == 15.0
    metrics = diversity_metrics(["the cat sat", "the dog ran far"])
    assert set(metrics) == {"distinct_1", "distinct_2", "self_bleu", "mean_length"}
    assert metrics["mean_length"] == 3.5
