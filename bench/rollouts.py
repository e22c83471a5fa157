"""Rollout throughput: our HFGenerationBackend.generate vs plain batched model.generate.

    python bench/rollouts.py                    # SmolLM2-135M-Instruct, 32 GSM8K prompts, greedy, 96 new tokens
    python bench/rollouts.py --quick            # tiny random model, 8 synthetic prompts
    python bench/rollouts.py --max-new-tokens 256 --repeats 3
    python bench/rollouts.py --backend vllm     # GPU: adds the colocated vLLM engine (bf16) as a variant

Same prompts (GSM8K questions of mixed length, chat template applied), same model, batch size 8,
same max_new_tokens, sampling off (greedy):
  ours        HFGenerationBackend(model, tok, batch_size=8).generate(prompts, GenerationParams(stop=task stops))
              -> prompts bucketed by length, left padding, KV cache, per-sequence stop strings / EOS
  plain       model.generate on the prompts in their given order, 8 at a time, left padded, EOS only
              (the usual loop without bucketing or stop strings)
  plain+stop  the same with stop_strings=task stops (isolates bucketing from early stopping)
  vllm        (--backend vllm, CUDA) harness.vllm_backend.VLLMGenerationBackend on the same checkpoint:
              the same prompt ids and stop handling; the engine's start-up is timed apart. With it the
              HF variants run on the GPU in bf16 too (target of issue 17: vllm useful tok/s >= 5x ours).
Useful tokens = completion tokens up to and including the first stop string or EOS (what training /
evaluation keep; the plain variants' outputs are cut with the same `truncate_at_stop`). Useful tokens/s
is the headline; raw decoded tokens/s (every position generate produced for a still-running row) is
reported too. Variants are interleaved (A, B, C, A, B, C, ...) in one process; medians.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fmt_table, loadavg, machine_info, median, out_path, versions, write_json  # noqa: E402

VARIANTS = ["ours", "plain", "plain+stop"]


def load_model_and_prompts(quick: bool, n_prompts: int, tmp: Path):
    """(model, tokenizer, rendered prompts, stop strings, source description)."""
    import torch

    from harness.data import get_task, load_examples, prompt_renderer, render_chat_prompt

    task = get_task("gsm8k")
    stop = tuple(task.stop)
    if quick:
        from transformers import AutoModelForCausalLM

        from harness.modeling import load_tokenizer, make_tiny_model

        d = make_tiny_model(tmp / "tiny", vocab_size=512, hidden=32, layers=2)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        tok = load_tokenizer(d)
    else:
        from harness.config import ModelSpec
        from harness.modeling import load_model

        model, tok = load_model(ModelSpec(name="smollm2-135m-instruct"))
    prompts: list[str] = []
    source = "synthetic"
    if not quick:
        try:
            from harness.paths import data_dir

            render = prompt_renderer(task, tok)
            prompts = [render(ex) for ex in load_examples(task, "eval", limit=n_prompts, data_dir=data_dir())]
            source = "gsm8k eval (first %d)" % len(prompts)
        except Exception as exc:  # noqa: BLE001 - fall back to synthetic prompts
            print(f"note: GSM8K data unavailable ({type(exc).__name__}: {exc}); synthetic prompts", file=sys.stderr)
    if not prompts:
        base = "A farmer has 12 cows and buys 7 more each week for several weeks while selling a few at the market"
        words = base.split()
        prompts = [render_chat_prompt(tok, "Q: " + " ".join(words[: 4 + (7 * i) % len(words)]) + f" ({i})? \n\nA:")
                   for i in range(n_prompts)]
    return model, tok, prompts, stop, source


def run_ours(model, tok, prompts, stop, max_new_tokens: int, batch_size: int) -> dict:
    from harness.generation import GenerationParams, HFGenerationBackend

    backend = HFGenerationBackend(model, tok, batch_size=batch_size)
    t0 = time.perf_counter()
    outs = backend.generate(prompts, GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop)))
    dt = time.perf_counter() - t0
    return {"wall_s": dt, "texts": [o.text for o in outs], "useful_tokens": sum(len(o.token_ids) for o in outs),
            "decoded_tokens": None}


def run_vllm(backend, prompts, stop, max_new_tokens: int) -> dict:
    from harness.generation import GenerationParams

    t0 = time.perf_counter()
    outs = backend.generate(prompts, GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop)))
    dt = time.perf_counter() - t0
    return {"wall_s": dt, "texts": [o.text for o in outs], "useful_tokens": sum(len(o.token_ids) for o in outs),
            "decoded_tokens": None}


def start_vllm(model, tok) -> tuple[object, float]:
    """The colocated engine on the model's checkpoint (its weights are the checkpoint's: no sync)."""
    from harness.vllm_backend import VLLMGenerationBackend

    t0 = time.perf_counter()
    backend = VLLMGenerationBackend.for_model(model, tok, gpu_memory_utilization=0.5, sync="checkpoint")
    return backend, time.perf_counter() - t0


def check_vllm(parser) -> None:
    """Refuse `--backend vllm` before any work when this machine cannot run it."""
    from harness.vllm_backend import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is not None:
        parser.error(f'--backend vllm: {reason}; on a CUDA machine `pip install -e ".[vllm]"`, or drop --backend vllm')


def run_plain(model, tok, prompts, stop, max_new_tokens: int, batch_size: int, use_stop: bool) -> dict:
    import torch

    from harness.generation import _strip_trailing_pad, eos_token_ids, truncate_at_stop

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = eos_token_ids(model, tok)
    texts, useful, decoded = [], 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            enc = tok(prompts[s : s + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            kw = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                      pad_token_id=pad_id, eos_token_id=sorted(eos))
            if use_stop:
                kw.update(stop_strings=list(stop), tokenizer=tok)
            out = model.generate(**enc, **kw)
            gen = out[:, enc["input_ids"].shape[1]:].tolist()
            for row in gen:
                ids = _strip_trailing_pad(row, pad_id, eos)
                decoded += len(ids)
                text, kept, _ = truncate_at_stop(tok, ids, stop, eos)
                texts.append(text)
                useful += len(kept)
    return {"wall_s": time.perf_counter() - t0, "texts": texts, "useful_tokens": useful, "decoded_tokens": decoded}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=96, help="the smoke suite's eval.gsm8k.max_new_tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                   help="vllm: add the vLLM engine as a variant (CUDA; HF variants then run on the GPU in bf16)")
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true", help="tiny random model, 8 prompts, 16 new tokens, 1 round")
    p.add_argument("--inprocess", action="store_true", help="accepted for symmetry (this benchmark is in-process)")
    p.add_argument("--out", help="JSON path (default bench/results/rollouts.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_prompts, args.max_new_tokens, args.repeats = min(args.n_prompts, 8), min(args.max_new_tokens, 16), 1
    if args.backend == "vllm":
        check_vllm(p)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-rollouts-") as d:
        model, tok, prompts, stop, source = load_model_and_prompts(args.quick, args.n_prompts, Path(d))
        lens = [len(tok(x, add_special_tokens=False)["input_ids"]) for x in prompts]
        variants = list(args.variants)
        vllm_backend = None
        if args.backend == "vllm":
            vllm_backend, info["vllm_engine_start_s"] = start_vllm(model, tok)
            model = model.to("cuda", torch.bfloat16)
            variants.append("vllm")
            run_vllm(vllm_backend, prompts[:2], stop, 4)
        # Warm-up: one small batch per code path.
        run_ours(model, tok, prompts[:2], stop, 4, 2)
        run_plain(model, tok, prompts[:2], stop, 4, 2, True)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        t_start = time.perf_counter()
        for r in range(args.repeats):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                if v == "vllm":
                    res = run_vllm(vllm_backend, prompts, stop, args.max_new_tokens)
                elif v == "ours":
                    res = run_ours(model, tok, prompts, stop, args.max_new_tokens, args.batch_size)
                else:
                    res = run_plain(model, tok, prompts, stop, args.max_new_tokens, args.batch_size, v == "plain+stop")
                runs[v].append(res)
                print(f"  round {r} {v:<11} {res['wall_s']:7.2f} s  useful tokens {res['useful_tokens']}",
                      file=sys.stderr, flush=True)
    ref = runs[variants[0]][0]["texts"]
    summary = {}
    for v, rs in runs.items():
        wall = median([x["wall_s"] for x in rs])
        useful = rs[0]["useful_tokens"]
        dec = rs[0]["decoded_tokens"]
        summary[v] = {
            "wall_s": wall, "wall_s_all": [x["wall_s"] for x in rs], "useful_tokens": useful,
            "useful_tokens_per_s": useful / wall if useful else float("nan"), "decoded_tokens": dec,
            "decoded_tokens_per_s": dec / wall if dec is not None else None,
            "same_text_as_first_variant": sum(a == b for a, b in zip(rs[0]["texts"], ref)) / len(ref),
        }
    base = summary.get("ours")
    for v, s in summary.items():
        s["ours_speedup_useful_tok_s"] = base["useful_tokens_per_s"] / s["useful_tokens_per_s"] if base else None
        s["ours_wall_ratio"] = s["wall_s"] / base["wall_s"] if base else None
    info["loadavg_end"] = loadavg()
    info["wall_s"] = round(time.perf_counter() - t_start, 1)
    table = fmt_table(
        ["variant", "wall s", "useful tokens", "useful tok/s", "decoded tok/s", "ours speedup (useful tok/s)",
         "same text"],
        [[v, s["wall_s"], s["useful_tokens"], s["useful_tokens_per_s"], s["decoded_tokens_per_s"],
          s["ours_speedup_useful_tok_s"], f"{s['same_text_as_first_variant']:.0%}"] for v, s in summary.items()])
    print(f"\nRollouts: {len(prompts)} prompts ({source}; {min(lens)}-{max(lens)} tokens), batch {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}, greedy, stop {stop!r}, {torch.get_num_threads()} threads, "
          f"device {next(model.parameters()).device}, "
          f"{args.repeats} interleaved rounds")
    print(table)
    print(f"load average {info['loadavg_start']} -> {info['loadavg_end']}")
    path = write_json(out_path(args.out, "rollouts.json"), {
        "benchmark": "rollouts", "machine": info, "versions": versions("torch", "transformers", "vllm"),
        "config": {k: v for k, v in vars(args).items() if k != "out"}, "prompt_source": source,
        "prompt_lengths": lens, "stop": list(stop), "summary": summary, "table_markdown": table,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
