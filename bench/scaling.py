"""How one training step's time and peak memory grow with sequence length and vocabulary: chunked vs dense.

    python bench/scaling.py                     # seq 256..2048 at vocab 64k; vocab 32k..152k at seq 1024
    python bench/scaling.py --quick             # small sizes (plumbing check)
    python bench/scaling.py --objective onpolicy_rkl --chunk-sizes 64 256

One step = student forward (random Llama, hidden 256, 2 layers) + teacher forward under no_grad (random
Llama, hidden 576, 4 layers; tied embeddings, shared vocabulary) + loss + backward, on one sequence of
`seq` tokens whose positions 1..seq-1 are all loss positions, through the training stage's own code:
`harness.training.forward.loss_hidden_states` and `harness.training.loop._objective_loss` (chunked_loss
with `loss_chunk_size`, or dense logits + dense_loss when it is None). No optimizer step (its cost does
not depend on sequence length). Series: dense, chunked with each `--chunk-sizes` value (default 64 and
1024, TrainConfig's default loss_chunk_size).
Each (series, point) runs in a fresh subprocess: peak = RSS above the post-setup baseline (kernel
high-water mark, see bench/_common.py) during the first full-size step; time = median of that step and
`--repeats - 1` more. Writes bench/results/scaling.json, scaling.md (tables) and scaling.png (plot).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    MIB,
    RESULTS_DIR,
    PeakRSS,
    emit,
    fmt_table,
    loadavg,
    machine_info,
    median,
    run_worker,
    versions,
    write_json,
)

SEQS = [256, 512, 1024, 2048]
VOCABS = [32768, 65536, 131072, 151936]
FIXED_VOCAB, FIXED_SEQ = 65536, 1024
STUDENT = dict(hidden=256, layers=2, heads=4, kv_heads=2)
TEACHER = dict(hidden=576, layers=4, heads=9, kv_heads=3)


def build_model(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model


def worker(series: str, seq: int, vocab: int, objective: str, repeats: int, threads: int | None,
           small: bool = False) -> dict:
    import torch

    from harness.training.batching import TokenSequence, collate
    from harness.training.forward import lm_head, loss_hidden_states
    from harness.training.loop import _objective_loss
    from objectives.base import build_objective

    if threads:
        torch.set_num_threads(threads)
    chunk = None if series == "dense" else int(series.split(":")[1])
    s_kw, t_kw = (dict(STUDENT), dict(TEACHER))
    if small:
        s_kw.update(hidden=64, heads=2, kv_heads=1)
        t_kw.update(hidden=96, layers=2, heads=3, kv_heads=1)
    student = build_model(vocab, **s_kw, seed=1).train()
    teacher = build_model(vocab, **t_kw, seed=0).eval().requires_grad_(False)
    obj = build_objective(objective, {})
    sched = obj.schedule(0, 100)
    s_head, t_head = lm_head(student), lm_head(teacher)
    g = torch.Generator().manual_seed(0)

    def make_batch(n: int):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        return collate([TokenSequence(tuple(ids[:1]), tuple(ids[1:]))], pad_id=0)

    def step(batch) -> float:
        student.zero_grad(set_to_none=True)
        h_s = loss_hidden_states(student, batch)
        with torch.no_grad():
            h_t = loss_hidden_states(teacher, batch)
        res = _objective_loss(obj, sched, h_s, s_head, h_t, t_head, batch.targets, chunk, None)
        res.loss_sum.backward()
        return float(res.loss_sum.detach())

    step(make_batch(16))  # warm-up: kernels, thread pools, lazily loaded code
    student.zero_grad(set_to_none=True)
    batch = make_batch(seq)
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        step(batch)
        times = [time.perf_counter() - t0]
    for _ in range(max(repeats - 1, 0)):
        gc.collect()
        t0 = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t0)
    return {"series": series, "seq": seq, "vocab": vocab, "objective": objective, "loss_positions": seq - 1,
            "peak_bytes": mem.peak_above_baseline, "memory_method": mem.method, "times_s": times,
            "time_s": median(times), "threads": torch.get_num_threads(), "student": s_kw, "teacher": t_kw}


def points(seqs: list[int], vocabs: list[int], fixed_vocab: int, fixed_seq: int) -> list[tuple[int, int]]:
    pts = [(s, fixed_vocab) for s in seqs] + [(fixed_seq, v) for v in vocabs]
    return list(dict.fromkeys(pts))


def plot(rows: list[dict], series: list[str], seqs, vocabs, fixed_vocab, fixed_seq, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for s in series:
        label = "dense" if s == "dense" else f"chunked ({s.split(':')[1]})"
        by_seq = sorted((r for r in rows if r["series"] == s and r["vocab"] == fixed_vocab and r["seq"] in seqs),
                        key=lambda r: r["seq"])
        by_voc = sorted((r for r in rows if r["series"] == s and r["seq"] == fixed_seq and r["vocab"] in vocabs),
                        key=lambda r: r["vocab"])
        for col, data, key in ((0, by_seq, "seq"), (1, by_voc, "vocab")):
            xs = [r[key] for r in data]
            axes[0][col].plot(xs, [r["time_s"] for r in data], marker="o", label=label)
            axes[1][col].plot(xs, [r["peak_bytes"] / MIB for r in data], marker="o", label=label)
    axes[0][0].set_title(f"vs sequence length (vocab {fixed_vocab})")
    axes[0][1].set_title(f"vs vocabulary (seq {fixed_seq})")
    for row, ylab in ((0, "step time (s)"), (1, "peak RSS above baseline (MiB)")):
        for col, xlab in ((0, "sequence length (loss positions + 1)"), (1, "vocabulary size")):
            ax = axes[row][col]
            ax.set_xlabel(xlab)
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("One training step (student fwd/bwd + teacher fwd + loss), fp32 CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=SEQS)
    p.add_argument("--vocabs", type=int, nargs="+", default=VOCABS)
    p.add_argument("--fixed-vocab", type=int, default=FIXED_VOCAB, help="vocabulary of the sequence sweep")
    p.add_argument("--fixed-seq", type=int, default=FIXED_SEQ, help="sequence length of the vocabulary sweep")
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--objective", default="onpolicy_fkl")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true", help="seq 64/128, vocab 2k/4k, small models, 1 call")
    p.add_argument("--inprocess", action="store_true", help="no subprocesses (tests; memory not isolated)")
    p.add_argument("--out-dir", help="directory for scaling.json/.md/.png (default bench/results)")
    p.add_argument("--worker", nargs=3, metavar=("SERIES", "SEQ", "VOCAB"), help=argparse.SUPPRESS)
    p.add_argument("--small", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # small sizes unless given explicitly
        d = p.parse_args([])
        for key, value in (("seqs", [64, 128]), ("vocabs", [2048, 4096]), ("fixed_vocab", 4096),
                           ("fixed_seq", 128), ("chunk_sizes", [16])):
            if getattr(args, key) == getattr(d, key):
                setattr(args, key, value)
        args.repeats, args.small = 1, True
    if args.worker:
        s, seq, vocab = args.worker
        emit(worker(s, int(seq), int(vocab), args.objective, args.repeats, args.threads, args.small))
        return 0

    out_dir = Path(args.out_dir) if args.out_dir else RESULTS_DIR
    info = machine_info()
    t_start = time.perf_counter()
    series = ["dense"] + [f"chunked:{c}" for c in args.chunk_sizes]
    rows = []
    for i, (seq, vocab) in enumerate(points(args.seqs, args.vocabs, args.fixed_vocab, args.fixed_seq)):
        for s in (series if i % 2 == 0 else series[::-1]):
            if args.inprocess:
                row = worker(s, seq, vocab, args.objective, args.repeats, args.threads, args.small)
            else:
                cli = ["--worker", s, str(seq), str(vocab), "--objective", args.objective, "--repeats", str(args.repeats)]
                cli += (["--threads", str(args.threads)] if args.threads else []) + (["--small"] if args.small else [])
                row = run_worker(__file__, cli)
            rows.append(row)
            print(f"  {s:<14} seq {seq:5d} vocab {vocab:6d}  {row['time_s']:6.2f} s  {row['peak_bytes'] / MIB:7.0f} MiB",
                  file=sys.stderr, flush=True)
    info["loadavg_end"] = loadavg()
    info["wall_s"] = round(time.perf_counter() - t_start, 1)

    def table(key: str, values: list[int], fixed: str) -> str:
        hdr = [key] + [f"{'dense' if s == 'dense' else 'chunked ' + s.split(':')[1]} {m}" for s in series
                       for m in ("s", "MiB")] + [f"chunked {args.chunk_sizes[0]}/dense time", f"chunked {args.chunk_sizes[0]}/dense mem"]
        body = []
        for v in values:
            sel = {r["series"]: r for r in rows if r[key] == v and (r["vocab"] == args.fixed_vocab if key == "seq" else r["seq"] == args.fixed_seq)}
            line: list = [v]
            for s in series:
                line += [sel[s]["time_s"], sel[s]["peak_bytes"] / MIB]
            c = sel[series[1]]
            line += [c["time_s"] / sel["dense"]["time_s"], c["peak_bytes"] / max(sel["dense"]["peak_bytes"], 1)]
            body.append(line)
        return f"#### {fixed}\n\n" + fmt_table(hdr, body)

    md = "\n\n".join([
        f"### One training step vs sequence length and vocabulary ({args.objective}, fp32 CPU)\n\n"
        f"Measured {info['measured_at']} ({info['bench_date']}), {info['cpus']} CPUs ({info['cpu']}), "
        f"{rows[0]['threads']} torch threads, load average {info['loadavg_start']} -> {info['loadavg_end']}. "
        f"Student: hidden {rows[0]['student']['hidden']}, {rows[0]['student']['layers']} layers; teacher: hidden "
        f"{rows[0]['teacher']['hidden']}, {rows[0]['teacher']['layers']} layers. Time = step seconds (median), "
        "MiB = peak RSS above baseline.",
        table("seq", args.seqs, f"Sequence length (vocab {args.fixed_vocab})"),
        table("vocab", args.vocabs, f"Vocabulary (sequence length {args.fixed_seq})"),
    ])
    print("\n" + md)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling.md").write_text(md + "\n")
    png = plot(rows, series, args.seqs, args.vocabs, args.fixed_vocab, args.fixed_seq, out_dir / "scaling.png")
    path = write_json(out_dir / "scaling.json", {
        "benchmark": "scaling", "machine": info, "versions": versions("torch", "transformers"),
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "out_dir")}, "rows": rows,
        "table_markdown": md,
    })
    print(f"wrote {path}, {out_dir / 'scaling.md'}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
