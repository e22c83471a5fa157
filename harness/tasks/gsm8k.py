"""GSM8K scoring: the final number of each output against the reference's `#### N` (accuracy).

The headline protocol is the Veto paper's (the task YAML's prompt, greedy, stop at a blank line,
answer extraction by the rules in harness/evaluation/gsm8k_extraction.yaml). With
`eval.gsm8k.protocols` containing `lm_eval`, lm-eval's own 5-shot gsm8k task runs beside it on the
same questions and is recorded under `lm_eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.evaluation.gsm8k import EXTRACTION_YAML, answers_match, extract_answer
from harness.tasks.contract import ScoreContext

RULES_FILES = (EXTRACTION_YAML,)


def generation_overrides(eval_cfg) -> dict[str, Any]:
    return {"max_new_tokens": eval_cfg.gsm8k.max_new_tokens}


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
