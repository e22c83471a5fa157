"""DialogSum scoring: greedy summaries judged pairwise against a baseline's, plus multi-reference ROUGE.

The baseline's summaries (`ctx.baseline_outputs`) are generated once per results directory by the
pipeline, from the model `eval.dialogsum.baseline` names; `references` compares against the first
reference summary instead.
"""

from __future__ import annotations

from typing import Any

from harness.evaluation.judges import PROMPTS_YAML
from harness.evaluation.rouge import rouge_scores
from harness.evaluation.win_rate import pairwise_win_rate, self_comparison
from harness.tasks.contract import ScoreContext

RULES_FILES = (PROMPTS_YAML,)


def generation_overrides(eval_cfg) -> dict[str, Any]:
    return {"max_new_tokens": eval_cfg.dialogsum.max_new_tokens}


def baseline_source(eval_cfg) -> str:
    return eval_cfg.dialogsum.baseline


def build_judge(eval_cfg):
    from harness.evaluation import judges

    jc = eval_cfg.dialogsum.judge
    if jc.kind == "rouge":
        return judges.RougeJudge()
    if jc.kind == "openai":
        return judges.OpenAICompatibleJudge(base_url=jc.base_url, model=jc.api_model, api_key_env=jc.api_key_env)
    from harness.modeling import load_model

    model, tok = load_model(jc.model)
    return judges.HFModelJudge(model, tok)


def score(ctx: ScoreContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ds = ctx.eval_cfg.dialogsum
    preds = [o.text.strip() for o in ctx.outputs]
    refs = [list(ex.references) for ex in ctx.examples]
    _, rouge_rows = rouge_scores(preds, refs)
    rows, items = [], []
    for ex, pred, rr, out in zip(ctx.examples, preds, rouge_rows, ctx.outputs):
        base_text = ex.references[0] if ds.baseline == "references" else (ctx.baseline_outputs or {}).get(ex.id)
        rows.append({"id": ex.id, "output": pred, "baseline_output": base_text, "references": list(ex.references),
                     "output_tokens": len(out.token_ids), **rr})
        if base_text is not None:
            items.append({"id": ex.id, "dialogue": ex.fields.get("dialogue", ex.prompt), "output": pred,
                          "baseline_output": base_text, "references": list(ex.references)})
    agg: dict[str, Any] = {
        "n": len(rows),
        "rouge1": _mean(r["rouge1"] for r in rows), "rouge2": _mean(r["rouge2"] for r in rows),
        "rougeL": _mean(r["rougeL"] for r in rows),
        "mean_length": _mean(r["output_tokens"] for r in rows),
        "protocol": {"baseline": ds.baseline,
                     "baseline_model": "references" if ds.baseline == "references" else ctx.baseline_name,
                     "judge": ds.judge.model_dump(mode="json")},
    }
    if items and ctx.is_baseline_model and ds.baseline != "references":
        # The baseline's own model against its own summaries: 50% by construction, no judge calls.
        wr, verdict_rows = self_comparison(items, order=ds.judge.order, seed=ds.judge.seed)
    elif items:
        # Each rank asks the judge about its share of the items (an HF judge is loaded on every rank).
        wr, verdict_rows = pairwise_win_rate(items, build_judge(ctx.eval_cfg), order=ds.judge.order, seed=ds.judge.seed,
                                             map_items=ctx.shards.map)
    if items:
        by_id = {v["id"]: v for v in verdict_rows}
        for r in rows:
            v = by_id.get(r["id"])
            if v is not None:
                r.update(verdict=v["verdict"], score=v["score"], judgements=v["judgements"])
        agg["protocol"]["pairwise"] = wr.pop("protocol")
        wr.pop("n", None)
        agg.update(wr)
    else:
        agg.update({"win_rate": None, "note": "no baseline summaries available; win-rate not computed"})
    return agg, rows


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
