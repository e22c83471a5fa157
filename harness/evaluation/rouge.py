"""Multi-reference ROUGE-1/2/L with the `rouge_score` package (no `evaluate.load`: it needs the Hub).

Per prediction, each ROUGE variant's F-measure is the maximum over that example's references
(DialogSum's test split has three per dialogue); the aggregate is the mean over examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def make_scorer(use_stemmer: bool = True) -> rouge_scorer.RougeScorer:
    """A scorer for ROUGE-1/2/L; Porter stemming as in the usual summarisation setup."""
    from rouge_score import rouge_scorer  # imported lazily: it pulls in nltk (~1 s)

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)


def multi_ref_rouge(scorer: rouge_scorer.RougeScorer, prediction: str, references: Sequence[str]) -> dict[str, float]:
    """F-measure per ROUGE type, each maximised over the references independently."""
    refs = [r for r in references if r and r.strip()]
    if not refs:
        raise ValueError("multi-reference ROUGE needs at least one non-empty reference")
    best = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref in refs:
        scores = scorer.score(ref, prediction)  # rouge_score's order is (target, prediction)
        for key in ROUGE_TYPES:
            best[key] = max(best[key], scores[key].fmeasure)
    return best


def rouge_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], use_stemmer: bool = True
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(aggregate {rouge1, rouge2, rougeL, n}, per-example scores) for aligned predictions/references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    scorer = make_scorer(use_stemmer)
    rows = [multi_ref_rouge(scorer, pred, refs) for pred, refs in zip(predictions, references)]
    n = len(rows)
    aggregate: dict[str, float] = {k: (sum(r[k] for r in rows) / n if n else float("nan")) for k in ROUGE_TYPES}
    aggregate["n"] = n
    return aggregate, rows
