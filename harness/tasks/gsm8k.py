"""GSM8K scoring: the final number of each output against the reference's `#### N` (accuracy).

The headline protocol is the Veto paper's (the task YAML's prompt, greedy, stop at a blank line,
answer extraction by the rules in harness/evaluation/gsm8k_extraction.yaml). With
`eval.gsm8k.protocols` containing `lm_eval`, lm-eval's own 5-shot gsm8k task runs beside it on the
same questions and is recorded under `lm_eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.evaluation.gsm8k import EXTRACTION_YAML, answers_match, extract_answer
from harness.tasks.contract import ScoreContext

RULES_FILES = (EXTRACTION_YAML,)


def generation_overrides(eval_cfg) -> dict[str, Any]:
    return {"max_new_tokens": eval_cfg.gsm8k.max_new_tokens}


def preflight_problems(options, eval_source: str, data_dir: Path | None, where: str) -> list[tuple[str, str]]:
    """(problem, fix) for what `eval.gsm8k.protocols` needs beyond the task's sources: lm-eval's
    protocol reads the test split itself, from the Hub or from local files. Called by the preflight
    before any model is loaded."""
    if "lm_eval" not in options.protocols:
        return []
    from harness.datafetch import fetch_command
    from harness.errors import DataError
    from harness.evaluation.gsm8k_lm_eval import lm_eval_data_source
    from harness.hub import dataset_cached, hub_unreachable_reason

    what = f"eval.gsm8k.protocols [lm_eval] ({where}.eval_source={eval_source})"
    fetch = fetch_command("gsm8k/test.jsonl", data_dir)
    try:
        kind, _ = lm_eval_data_source(eval_source, data_dir)
    except DataError as err:
        return [(f"{what}: {err}",
                 f"{fetch} and set {where}.eval_source=gsm8k_local, or drop lm_eval from eval.gsm8k.protocols")]
    if kind == "hub":
        reason = hub_unreachable_reason()
        if reason is not None and not dataset_cached("openai/gsm8k"):
            return [(f"{what}: lm-eval's gsm8k reads openai/gsm8k from the Hub, but {reason} and it is not in the "
                     "local datasets cache", f"run online, or {fetch} and set {where}.eval_source=gsm8k_local")]
    return []


def score(ctx: ScoreContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows = []
    for ex, prompt, out in zip(ctx.examples, ctx.prompts, ctx.outputs):
        pred = extract_answer(out.text)
        target = ex.answer
        # An example without a gold answer cannot be scored: its row says so (correct None) and it is
        # left out of the denominator instead of counting as wrong; the protocol records how many.
        correct = None if target is None else (pred is not None and answers_match(pred, target))
        rows.append({"id": ex.id, "prompt": prompt, "output": out.text, "extracted": pred, "target": target,
                     "correct": correct if correct is None else bool(correct), "finish_reason": out.finish_reason,
                     "output_tokens": len(out.token_ids)})
    scored = [r for r in rows if r["correct"] is not None]
    n = len(scored)
    agg: dict[str, Any] = {
        "accuracy": sum(r["correct"] for r in scored) / n if n else float("nan"), "n": n,
        "mean_length": sum(r["output_tokens"] for r in rows) / len(rows) if rows else float("nan"),
        "protocol": {"name": "paper", "protocols": list(ctx.eval_cfg.gsm8k.protocols),
                     "excluded_no_gold_answer": len(rows) - n},
    }
    if "lm_eval" in ctx.eval_cfg.gsm8k.protocols:
        # lm-eval drives its own requests and batching: rank 0 runs it whole, the others receive its result.
        agg["lm_eval"] = ctx.shards.on_writer(lambda: _lm_eval(ctx))
    return agg, rows


def _lm_eval(ctx: ScoreContext) -> dict[str, Any]:
    """lm-eval's own 5-shot protocol on the same (seeded) limit of test questions."""
    from harness.evaluation.gsm8k_lm_eval import lm_eval_data_source, run_lm_eval_gsm8k

    # Same source resolution as the paper protocol: Hub when the task reads the Hub, local GSM8K
    # files when it reads those.
    kind, gsm_dir = lm_eval_data_source(ctx.task_cfg.eval_source, ctx.data_dir)
    return run_lm_eval_gsm8k(ctx.model, ctx.tokenizer, data_dir=gsm_dir, limit=ctx.task_cfg.eval_limit,
                             batch_size=ctx.eval_cfg.batch_size, num_fewshot=ctx.eval_cfg.gsm8k.lm_eval_num_fewshot,
                             max_gen_toks=ctx.eval_cfg.gsm8k.lm_eval_max_gen_toks, source=kind)


def reward(examples: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """Training reward (contract v2 objectives): answer match with the evaluation's extraction and
    exact-rational comparison, so the reward and the benchmark metric cannot disagree."""
    from harness.evaluation.gsm8k import normalize_number

    out = []
    for ex, text in zip(examples, completions, strict=True):
        target = getattr(ex, "answer", None)
        if target is None:
            raise ValueError(f"gsm8k example {getattr(ex, 'id', '?')} has no reference answer; cannot compute its reward")
        out.append(1.0 if answers_match(extract_answer(text), normalize_number(str(target))) else 0.0)
    return out
