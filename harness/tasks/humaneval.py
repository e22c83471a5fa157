"""HumanEval scoring: each problem's n completions run against its tests in the confined sandbox (pass@k).

Model-written code runs only through `harness.evaluation.humaneval.evaluate_humaneval` (sandbox
child processes); the diversity of the n samples rides along as diagnostics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.evaluation.code_clean import RULES_YAML
from harness.evaluation.diversity import distinct_n, self_bleu
from harness.evaluation.humaneval import evaluate_humaneval
from harness.tasks.contract import ScoreContext

RULES_FILES = (RULES_YAML,)


def generation_overrides(eval_cfg) -> dict[str, Any]:
    he = eval_cfg.humaneval
    return {"max_new_tokens": he.max_new_tokens, "temperature": he.temperature, "top_p": he.top_p, "n": he.n_samples}


def score(ctx: ScoreContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    he = ctx.eval_cfg.humaneval
    problems, completions = [], []
    d1, d2, sb, lengths = [], [], [], []
    for i, ex in enumerate(ctx.examples):
        outs = ctx.samples(i)
        samples = [o.text for o in outs]
        lengths += [len(o.token_ids) for o in outs]
        problems.append({"task_id": ex.meta["task_id"], "prompt": ex.meta["code_prompt"], "test": ex.meta["test"],
                         "entry_point": ex.meta["entry_point"]})
        completions.append(samples)
        d1.append(distinct_n(samples, 1))
        d2.append(distinct_n(samples, 2))
        if len(samples) > 1:
            sb.append(self_bleu(samples))
    # Each rank runs its share of the sandboxed programs; every rank gets all results back in order.
    agg, rows = evaluate_humaneval(problems, completions, k_list=he.k, workers=he.workers, timeout_s=he.timeout_s,
                                   map_jobs=ctx.shards.map)
    agg["distinct_1"] = sum(d1) / len(d1) if d1 else None
    agg["distinct_2"] = sum(d2) / len(d2) if d2 else None
    agg["self_bleu"] = sum(sb) / len(sb) if sb else None
    agg["mean_length"] = sum(lengths) / len(lengths) if lengths else None
    return agg, rows


def reward(examples: Sequence[Any], completions: Sequence[str], *, timeout_s: float = 5.0) -> list[float]:
    """Training reward (contract v2 objectives): pass/fail of the problem's tests, run only in the
    evaluation's confined sandbox, so the reward and the benchmark metric cannot disagree."""
    problems, per_problem = [], []
    for ex, text in zip(examples, completions, strict=True):
        meta = getattr(ex, "meta", {}) or {}
        missing = [k for k in ("task_id", "code_prompt", "test", "entry_point") if k not in meta]
        if missing:
            raise ValueError(f"humaneval example {getattr(ex, 'id', '?')} lacks {missing}; cannot run its tests")
        # a unique id per completion: the same problem appears n_samples times in a group
        problems.append({"task_id": f"{meta['task_id']}#{len(problems)}", "prompt": meta["code_prompt"],
                         "test": meta["test"], "entry_point": meta["entry_point"]})
        per_problem.append([text])
    _, rows = evaluate_humaneval(problems, per_problem, k_list=(1,), timeout_s=timeout_s)
    return [1.0 if row["passed"][0] else 0.0 for row in rows]
