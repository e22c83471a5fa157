"""Evaluation throughput: GSM8K generation (ours vs lm-eval's HF wrapper) and HumanEval sandbox workers.

    python bench/eval_throughput.py             # SmolLM2-135M-Instruct, 32 GSM8K prompts; all 164 HumanEval problems
    python bench/eval_throughput.py --quick     # tiny random model, 8 prompts; 6 HumanEval problems
    python bench/eval_throughput.py --skip-humaneval --gsm8k-prompts 64

GSM8K: the same rendered prompts (chat template), stop strings (task YAML), max new tokens, greedy,
batch size 8:
  ours     the eval path: HFGenerationBackend(model, tok, batch_size=8).generate(...) (as eval_runner does)
  lm-eval  lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tok, batch_size=8).generate_until(
           [Instance("generate_until", (prompt, {"until": stop, "max_gen_toks": N, "do_sample": False}))])
Tokens = the returned texts re-tokenized (one definition for both; lm-eval returns strings). Interleaved
rounds in one process; medians.
HumanEval: `harness.evaluation.humaneval.evaluate_humaneval` on the canonical solutions (every program
must pass) with workers 1 vs 2 (sandboxed child processes), interleaved; executions/s = programs / wall.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fmt_table, loadavg, machine_info, median, out_path, versions, write_json  # noqa: E402
from bench.rollouts import load_model_and_prompts  # noqa: E402


def gsm8k_ours(model, tok, prompts, stop, max_new_tokens: int, batch_size: int) -> tuple[float, list[str]]:
    from harness.generation import GenerationParams, HFGenerationBackend

    backend = HFGenerationBackend(model, tok, batch_size=batch_size)
    t0 = time.perf_counter()
    outs = backend.generate(prompts, GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop)))
    return time.perf_counter() - t0, [o.text for o in outs]


def make_hflm(model, tok, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=str(next(model.parameters()).device))


def gsm8k_lm_eval(lm, prompts, stop, max_new_tokens: int) -> tuple[float, list[str]]:
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=(p, {"until": list(stop), "max_gen_toks": max_new_tokens, "do_sample": False}))
            for p in prompts]
    t0 = time.perf_counter()
    texts = lm.generate_until(reqs, disable_tqdm=True)
    return time.perf_counter() - t0, texts


def humaneval_run(problems, workers: int) -> tuple[float, dict]:
    from harness.evaluation.humaneval import evaluate_humaneval

    t0 = time.perf_counter()
    agg, _ = evaluate_humaneval(problems, [[p["canonical_solution"]] for p in problems], k_list=[1], workers=workers)
    return time.perf_counter() - t0, agg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gsm8k-prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=96, help="the smoke suite's eval.gsm8k.max_new_tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--humaneval-problems", type=int, default=164, help="first N HumanEval problems")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--skip-gsm8k", action="store_true")
    p.add_argument("--skip-humaneval", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true", help="tiny model, 8 prompts x 16 tokens, 6 problems, 1 round")
    p.add_argument("--inprocess", action="store_true", help="accepted for symmetry (this benchmark is in-process)")
    p.add_argument("--out", help="JSON path (default bench/results/eval_throughput.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.gsm8k_prompts, args.max_new_tokens, args.repeats = min(args.gsm8k_prompts, 8), min(args.max_new_tokens, 16), 1
        args.humaneval_problems = min(args.humaneval_problems, 6)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    t_start = time.perf_counter()
    payload: dict = {"benchmark": "eval_throughput", "machine": info,
                     "versions": versions("torch", "transformers", "lm_eval"),
                     "config": {k: v for k, v in vars(args).items() if k != "out"}}
    tables = []

    if not args.skip_gsm8k:
        with tempfile.TemporaryDirectory(prefix="bench-eval-") as d:
            model, tok, prompts, stop, source = load_model_and_prompts(args.quick, args.gsm8k_prompts, Path(d))
            lm = make_hflm(model, tok, args.batch_size)
            gsm8k_ours(model, tok, prompts[:2], stop, 4, 2)  # warm-up
            gsm8k_lm_eval(lm, prompts[:2], stop, 4)
            runs: dict[str, list[tuple[float, list[str]]]] = {"ours": [], "lm-eval": []}
            for r in range(args.repeats):
                for v in (["ours", "lm-eval"] if r % 2 == 0 else ["lm-eval", "ours"]):
                    res = (gsm8k_ours(model, tok, prompts, stop, args.max_new_tokens, args.batch_size) if v == "ours"
                           else gsm8k_lm_eval(lm, prompts, stop, args.max_new_tokens))
                    runs[v].append(res)
                    print(f"  gsm8k round {r} {v:<8} {res[0]:7.2f} s", file=sys.stderr, flush=True)
            n_tok = {v: sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in rs[0][1]) for v, rs in runs.items()}
            same = sum(a.strip() == b.strip() for a, b in zip(runs["ours"][0][1], runs["lm-eval"][0][1])) / len(prompts)
            g = {}
            for v, rs in runs.items():
                wall = median([x[0] for x in rs])
                g[v] = {"wall_s": wall, "wall_s_all": [x[0] for x in rs], "output_tokens": n_tok[v],
                        "tokens_per_s": n_tok[v] / wall}
            g["speedup_tokens_per_s"] = (g["ours"]["tokens_per_s"] / g["lm-eval"]["tokens_per_s"]
                                         if g["lm-eval"]["tokens_per_s"] else float("nan"))
            g["wall_ratio_lm_eval_over_ours"] = g["lm-eval"]["wall_s"] / g["ours"]["wall_s"]
            g["same_text_fraction"] = same
            g["prompt_source"] = source
            g["stop"] = list(stop)
            payload["gsm8k"] = g
            tables.append(
                f"GSM8K generation: {len(prompts)} prompts ({source}), batch {args.batch_size}, max_new_tokens "
                f"{args.max_new_tokens}, greedy, stop {list(stop)!r}, {torch.get_num_threads()} threads\n" + fmt_table(
                    ["path", "wall s", "output tokens", "tokens/s", "ours speedup", "same text"],
                    [["ours (HFGenerationBackend)", g["ours"]["wall_s"], g["ours"]["output_tokens"],
                      g["ours"]["tokens_per_s"], 1.0, "-"],
                     ["lm-eval HFLM.generate_until", g["lm-eval"]["wall_s"], g["lm-eval"]["output_tokens"],
                      g["lm-eval"]["tokens_per_s"], g["speedup_tokens_per_s"], f"{same:.0%}"]]))

    if not args.skip_humaneval:
        from harness.evaluation.humaneval import load_humaneval_problems
        from harness.evaluation.sandbox import sandbox_capabilities

        problems = load_humaneval_problems()[: args.humaneval_problems]
        humaneval_run(problems[:2], 1)  # warm-up (page cache, uid pool)
        hr: dict[int, list[tuple[float, dict]]] = {w: [] for w in args.workers}
        for r in range(args.repeats):
            for w in (args.workers if r % 2 == 0 else args.workers[::-1]):
                res = humaneval_run(problems, w)
                hr[w].append(res)
                print(f"  humaneval round {r} workers {w} {res[0]:7.2f} s  pass@1 {res[1].get('pass@1')}",
                      file=sys.stderr, flush=True)
        h = {}
        for w, rs in hr.items():
            wall = median([x[0] for x in rs])
            h[str(w)] = {"wall_s": wall, "wall_s_all": [x[0] for x in rs], "executions_per_s": len(problems) / wall,
                         "pass@1": rs[0][1].get("pass@1")}
        w0 = str(args.workers[0])
        for w in h:
            h[w]["speedup_vs_workers_%s" % w0] = h[w]["executions_per_s"] / h[w0]["executions_per_s"]
        caps = sandbox_capabilities()
        payload["humaneval"] = {"n_programs": len(problems), "by_workers": h,
                                "confinement": {k: v for k, v in caps.items() if k != "uid"}}
        tables.append(
            f"HumanEval sandbox: {len(problems)} canonical solutions, evaluate_humaneval (cleaned programs, "
            f"timeout 5 s)\n" + fmt_table(
                ["workers", "wall s", "executions/s", f"speedup vs {w0}", "pass@1"],
                [[w, s["wall_s"], s["executions_per_s"], s[f"speedup_vs_workers_{w0}"], s["pass@1"]] for w, s in h.items()]))

    info["loadavg_end"] = loadavg()
    info["wall_s"] = round(time.perf_counter() - t_start, 1)
    text = "\n\n".join(tables)
    print("\n" + text)
    print(f"load average {info['loadavg_start']} -> {info['loadavg_end']}")
    payload["table_markdown"] = text
    path = write_json(out_path(args.out, "eval_throughput.json"), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
