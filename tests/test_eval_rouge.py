"""Multi-reference ROUGE with rouge_score (never evaluate.load)."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from harness.evaluation.rouge import make_scorer, multi_ref_rouge, rouge_scores


def test_max_over_references_per_type() -> None:
    scorer = make_scorer()
    pred = "the cat sat on the mat"
    refs = ["a dog barked at night", "the cat sat on the mat"]
    assert multi_ref_rouge(scorer, pred, refs) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    single = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(refs[0], pred)
    assert multi_ref_rouge(scorer, pred, refs[:1])["rouge1"] == pytest.approx(single["rouge1"].fmeasure)


def test_aggregate_is_mean_of_per_example_max() -> None:
    preds = ["the cat sat on the mat", "completely unrelated words"]
    refs = [["the cat sat on the mat", "x"], ["the cat sat"]]
    agg, rows = rouge_scores(preds, refs)
    assert rows[0]["rougeL"] == 1.0 and rows[1]["rougeL"] == 0.0
    assert agg["rougeL"] == pytest.approx(0.5) and agg["n"] == 2
    assert 0.0 <= agg["rouge2"] <= agg["rouge1"] <= 1.0


def test_stemming_and_validation() -> None:
    scorer = make_scorer(use_stemmer=True)
    assert multi_ref_rouge(scorer, "cats running", ["cat runs"])["rouge1"] == 1.0
    with pytest.raises(ValueError):
        multi_ref_rouge(scorer, "x", ["", "  "])
    with pytest.raises(ValueError):
        rouge_scores(["a"], [])


def test_module_does_not_use_evaluate() -> None:
    import re
    from pathlib import Path

    import harness.evaluation.rouge as mod

    assert not re.search(r"^\s*(import|from)\s+evaluate\b", Path(mod.__file__).read_text(), re.MULTILINE)
