"""Which 20 of SmolLM2-135M-Instruct's 30 layers make the best zero-shot student?

Measures held-out GSM8K answer cross-entropy (nats per response token) for the teacher and for
depth-pruned students. Prompt: `Q: {question} \\n\\nA:` in the chat template; response: the
reference answer text (with its `#### N` line); loss on the response tokens only.

Students are evaluated in memory (the teacher's layer list is swapped, no KV cache) so that many
layer sets are cheap; `derive_pruned` produces the identical network on disk (see the tests).

    python bench/pruning_choice.py [--n 30] [--greedy] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import ModelSpec  # noqa: E402
from harness.data import load_examples, render_chat_prompt  # noqa: E402
from harness.modeling import load_model  # noqa: E402

N_LAYERS = 30


def build_batch(tokenizer, examples):
    """Right-padded ids, attention mask and a mask of response positions (the loss targets)."""
    seqs, resp_masks = [], []
    for ex in examples:
        prompt_ids = tokenizer(render_chat_prompt(tokenizer, ex.prompt), add_special_tokens=False).input_ids
        resp_ids = tokenizer(ex.references[0], add_special_tokens=False).input_ids
        seqs.append(prompt_ids + resp_ids)
        resp_masks.append([0] * len(prompt_ids) + [1] * len(resp_ids))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    resp = torch.tensor([m + [0] * (width - len(m)) for m in resp_masks])
    return ids, attn, resp


@torch.no_grad()
def response_ce(model, ids, attn, resp, keep: list[int] | None = None, chunk: int = 10) -> float:
    """Mean per-token CE on response positions, with the decoder stack limited to `keep`.

    The 49k-row lm_head is applied only where a response token is predicted: on CPU it would
    otherwise cost about as much as the whole backbone.
    """
    backbone, head = model.get_decoder(), model.get_output_embeddings()
    layers = backbone.layers
    if keep is not None:
        backbone.layers = torch.nn.ModuleList([layers[i] for i in keep])
    try:
        total, count = 0.0, 0
        for s in range(0, ids.shape[0], chunk):
            hidden = backbone(input_ids=ids[s:s + chunk], attention_mask=attn[s:s + chunk], use_cache=False).last_hidden_state
            mask = resp[s:s + chunk, 1:].bool()  # position t predicts token t+1
            logits = head(hidden[:, :-1][mask]).float()
            targets = ids[s:s + chunk, 1:][mask]
            total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            count += int(mask.sum())
        return total / count
    finally:
        backbone.layers = layers


def drop(*ranges: range | list[int]) -> list[int]:
    dropped = {i for r in ranges for i in r}
    return [i for i in range(N_LAYERS) if i not in dropped]


def candidates() -> dict[str, list[int]]:
    even = sorted({round(i * (N_LAYERS - 1) / 19) for i in range(20)})
    return {
        "teacher (30 layers)": list(range(N_LAYERS)),
        "20 evenly spaced": even,
        "drop 0-9": drop(range(0, 10)),
        "drop 5-14": drop(range(5, 15)),
        "drop 10-19": drop(range(10, 20)),
        "drop 12-21": drop(range(12, 22)),
        "drop 15-24": drop(range(15, 25)),
        "drop 18-27": drop(range(18, 28)),
        "drop 20-29": drop(range(20, 30)),
        "keep 0-1, drop odd 3..21": drop(range(3, 22, 2)),
        "keep 0-1, drop even 2..20": drop(range(2, 21, 2)),
        "drop odd 9..27": drop(range(9, 28, 2)),
        "drop even 8..26": drop(range(8, 27, 2)),
    }


def greedy(model, batch, target: int = 20) -> tuple[list[int], list[tuple[int, float]]]:
    """Drop one layer at a time, always the one whose removal costs the least CE."""
    keep, trace = list(range(N_LAYERS)), []
    while len(keep) > target:
        scores = {i: response_ce(model, *batch, keep=[k for k in keep if k != i]) for i in keep}
        best = min(scores, key=scores.get)
        keep.remove(best)
        trace.append((best, scores[best]))
        print(f"  greedy: drop {best:2d} -> {len(keep)} layers, CE {scores[best]:.3f}", flush=True)
    return keep, trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="GSM8K test answers to score")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--greedy", action="store_true", help="also run a greedy layer-drop search (slow)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--only", nargs="*", default=None, help="evaluate only these candidate names")
    args = ap.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tok = load_model(ModelSpec(name="smollm2-135m-instruct"))
    # The first N test problems in file order (ids end in the file index), not a shuffled sample.
    examples = load_examples("gsm8k", "eval", "gsm8k_local", data_dir=args.data_dir)
    examples = sorted(examples, key=lambda e: int(e.id.rsplit("-", 1)[1]))[: args.n]
    batch = build_batch(tok, examples)
    n_tokens = int(batch[2].sum())
    print(f"{len(examples)} GSM8K test answers, {n_tokens} response tokens\n")

    results = []
    for name, keep in candidates().items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        ce = response_ce(model, *batch, keep=keep)
        results.append({"name": name, "layers": len(keep), "keep": keep, "ce": ce})
        print(f"  {name:28s} {len(keep):2d}L  CE {ce:.3f}  ({time.perf_counter() - start:.1f} s)", flush=True)
    if args.greedy:
        keep, trace = greedy(model, batch)
        results.append({"name": "greedy search", "layers": len(keep), "keep": keep,
                        "ce": response_ce(model, *batch, keep=keep), "trace": trace})

    print("\n| student | layers | kept layers | CE (nats/token) |\n| --- | --- | --- | --- |")
    for r in sorted(results, key=lambda r: r["ce"]):
        print(f"| {r['name']} | {r['layers']} | {r['keep']} | {r['ce']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"n_examples": len(examples), "n_tokens": n_tokens, "results": results}, indent=2))


if __name__ == "__main__":
    main()
