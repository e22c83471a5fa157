"""`distill-bench` command line: run, train, eval, report, objectives, tasks.

The adapters between argparse and the pipeline live here and only here: each verb validates its
whole configuration before doing any work, then calls `harness.pipeline` / `harness.suite` /
`harness.report`. User errors print one clear message (field path and fix) and exit with status 2,
never a traceback. What a verb prints is meant for a person.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import ConfigError, DistillBenchError

EPILOG = ("Docs: README.md. Objectives and tasks are plugins: see `distill-bench objectives`, `distill-bench tasks`, "
          "objectives/README.md and examples/.")


def positive_int(text: str) -> int:
    """argparse type for counts: 0 or a negative number would silently mean "no cap" or train nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1 (omit the option for no cap)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distill-bench",
        description="Compare knowledge-distillation objectives for language models on equal footing.",
        epilog=EPILOG,
    )
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a plugin (repeatable): FILE.py defines objectives, FILE.yaml defines a task; installed "
                        "plugins in entry-point groups `distill_bench.objectives` / `distill_bench.tasks` load automatically")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = sub.add_parser("run", help="run a comparison suite (train every objective, evaluate, write leaderboards)",
                         description="Train every objective of a suite on every task and seed, evaluate each student and "
                                     "write leaderboards. Without SUITE the embedded offline `smoke` suite runs. Finished "
                                     "cells are skipped and interrupted ones resume from their checkpoint.")
    run.add_argument("suite", nargs="?", default="smoke",
                     help="suite YAML path, or the name of an embedded suite (smoke, paper); default: smoke")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=3e-5 seeds=[0,1]")
    run.add_argument("--dry-run", action="store_true", help="validate and print the cell plan with estimated cost; do nothing")
    run.add_argument("--shard", default=None, metavar="I/N", help="run only cells i (1-based) of n shards; merge with `report`")
    run.add_argument("--results-dir", default="results", help="root of raw results (default: results/)")
    run.add_argument("--leaderboards-dir", default="leaderboards", help="where leaderboards are written (default: leaderboards/)")
    run.add_argument("--data-dir", default=None, help="local data directory (default: $DISTILL_BENCH_DATA_DIR or ../shared/data)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: cells one after another in this process (default); ray: every cell a Ray task "
                          "with the suite's `ray:` resources, retried when its worker is lost (pip install -e \".[ray]\")")
    run.add_argument("--address", default=None, metavar="auto|ray://HOST:10001",
                     help="with --executor ray: the cluster to use (`auto`: the one started by `ray start` on this "
                          "machine; `ray://...`: Ray Client); default: $RAY_ADDRESS, else a new local cluster")

    tr = sub.add_parser("train", help="train one objective on one task",
                        description="Train one student with one objective on one task from a run YAML "
                                    "(teacher, student, task, objective, train). Writes a standard HF checkpoint, "
                                    "telemetry.jsonl and train_summary.json; rerunning resumes from the checkpoint.")
    tr.add_argument("config", help="run YAML (see examples/train_*.yaml)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. objective.params.beta_start=0.5")
    tr.add_argument("--max-steps", type=positive_int, default=None, help="cap on optimizer steps (>= 1)")
    tr.add_argument("--limit", type=positive_int, default=None, help="use only the first N training examples (>= 1)")
    tr.add_argument("--output-dir", default=None, help="run directory (default: the config's output_dir)")
    tr.add_argument("--data-dir", default=None, help="local data directory")
    tr.add_argument("--no-progress", action="store_true", help="hide progress bars")

    ev = sub.add_parser("eval", help="evaluate one model on tasks",
                        description="Evaluate any model (Hub id, local dir, .gguf, package:..., checkpoint dir) on tasks. "
                                    "Writes per-example JSONL and an aggregate JSON with the exact protocol.")
    ev.add_argument("model", help="model: Hub id, local HF dir, .gguf file, package:<module>/<file>, or smollm2-135m-instruct")
    ev.add_argument("--tasks", default="gsm8k,humaneval,dialogsum", help="comma-separated tasks (default: all three)")
    ev.add_argument("--limit", type=positive_int, default=None, help="evaluate N examples per task (a fixed seeded subset)")
    ev.add_argument("--source", action="append", default=[], metavar="TASK=SOURCE",
                    help="data source per task: a source name from harness/tasks/<task>.yaml or file:<path> (repeatable)")
    ev.add_argument("--config", default=None, help="YAML with an `eval:` section (EvalConfig) and optional `teacher:` for diagnostics/baselines")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="eval overrides, e.g. eval.humaneval.n_samples=4")
    ev.add_argument("--baseline-model", default=None, metavar="MODEL",
                    help="model whose DialogSum summaries the judge compares against (default: the config's teacher; "
                         "set eval.dialogsum.baseline=references to use the first reference instead)")
    ev.add_argument("--output-dir", default="results/eval", help="where records are written (default: results/eval)")
    ev.add_argument("--data-dir", default=None, help="local data directory")
    ev.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ev.add_argument("--json", action="store_true", help="print the aggregates as JSON instead of a summary")

    rp = sub.add_parser("report", help="rebuild leaderboards from raw results",
                        description="Rebuild leaderboards (Markdown, HTML, CSV, plots) from one or more results "
                                    "directories alone; several directories (shards) are merged.")
    rp.add_argument("results", nargs="+", help="results directory (results/NAME), several to merge shards")
    rp.add_argument("--out", default="leaderboards", help="output directory (default: leaderboards/)")
    rp.add_argument("--name", default=None, help="report name (default: the results directory name)")

    da = sub.add_parser("data", help="get task data files into the data directory (`data fetch NAME`)",
                        description="Download a task's data files into the data directory, checked by sha256, "
                                    "resumable (HTTP Range) and atomic. Then point runs at it with "
                                    "--data-dir / $DISTILL_BENCH_DATA_DIR.")
    dsub = da.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    fe = dsub.add_parser("fetch", help="download NAME (veto-paper, gsm8k, dialogsum)",
                         description="veto-paper: the Veto paper's 1K splits from its public repository; gsm8k: "
                                     "openai/gsm8k from the Hub as gsm8k/{train,test}.jsonl; dialogsum: "
                                     "knkarthick/dialogsum's validation/test CSV files from the Hub, converted to "
                                     "dialogsum/{dev,test}.jsonl (the converted files are hash-checked; the Hub "
                                     "commit served is recorded in dialogsum/SOURCE.json).")
    fe.add_argument("names", nargs="+", metavar="NAME", help="what to fetch: veto-paper, gsm8k, dialogsum")
    fe.add_argument("--data-dir", default=None, help="destination (default: $DISTILL_BENCH_DATA_DIR)")
    fe.add_argument("--base-url", default=None, help="mirror holding the same files (veto-paper, dialogsum)")

    ob = sub.add_parser("objectives", help="list registered objectives with parameters and sequence source",
                        description="List every registered objective: built-ins, installed entry-point plugins and --plugin files.")
    ob.add_argument("--json", action="store_true", help="machine-readable output")

    tk = sub.add_parser("tasks", help="list registered tasks with their data sources and metrics",
                        description="List every registered task: built-ins (harness/tasks/*.yaml), installed entry-point "
                                    "plugins (group `distill_bench.tasks`) and --plugin TASK.yaml files.")
    tk.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb in ("run", "train", "eval") and not getattr(args, "dry_run", False):
            _quiet_library_progress()  # a dry run loads no model: skip importing transformers (~1.5 s)
        _load_plugins(args.plugin)
        handler = {"run": cmd_run, "train": cmd_train, "eval": cmd_eval, "report": cmd_report, "objectives": cmd_objectives,
                   "tasks": cmd_tasks, "data": cmd_data}[args.verb]
        return handler(args) or 0
    except DistillBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        from harness.io import DISK_ERRNOS, disk_error

        if err.errno not in DISK_ERRNOS:
            raise
        # A write outside the atomic writers (a library's save, a cache) hit a full or read-only disk.
        print(f"error: {disk_error(err.filename or '.', err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


def _quiet_library_progress() -> None:
    """Our own bars show progress; transformers' per-load weight bars would bury them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _load_plugins(files: list[str]) -> None:
    from harness.data import load_task_file
    from objectives.base import load_plugin_file

    for f in files:
        if str(f).endswith((".yaml", ".yml")):
            load_task_file(f)
        else:
            load_plugin_file(f)


def cmd_tasks(args) -> int:
    from harness.data import describe_tasks

    rows = describe_tasks()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(row["name"] + ("" if row["origin"] == "built-in" else f"   [{row['origin']}]"))
        print(f"    {row['description']}")
        for split in ("train", "eval"):
            srcs = row["sources"][split]
            auto = row["auto"].get(split) or []
            print(f"    {split} sources: {', '.join(srcs) or '-'}" + (f"   (auto: {' > '.join(auto)})" if auto else ""))
        print(f"    metrics: {', '.join(row['metrics']) or '-'}   needs: {', '.join(row['needs']) or 'nothing else'}"
              f"   scorer: {row['scorer']}")
    return 0


def cmd_objectives(args) -> int:
    from objectives.base import describe_all

    rows = describe_all()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        sources = row.get("sources") or row.get("source")
        print(f"{row['name']}")
        print(f"    {row.get('description', '')}")
        print(f"    sequence source: {sources}   teacher signal: {row.get('teacher_signal')}")
        if row.get("hooks"):
            print(f"    contract v2 hooks: {', '.join(row['hooks'])}")
        for prm in row.get("params", []):
            rng = f"  range {prm['range']}" if prm.get("range") else ""
            print(f"    - {prm['name']}: {prm.get('type')} = {prm.get('default')!r}{rng}")
    return 0


def cmd_train(args) -> int:
    from harness.config import load_run_config
    from harness.pipeline import run_training

    raw_overrides = list(args.overrides)
    if args.data_dir:
        raw_overrides.append(f"data_dir={args.data_dir}")
    cfg = load_run_config(args.config, raw_overrides)
    out = Path(args.output_dir or cfg.output_dir)
    from harness.locks import FileLock

    import contextlib
    import os

    # Two `train`s into one run directory would interleave telemetry and race on checkpoints. Under
    # torchrun / accelerate every process runs this verb; only rank 0 writes files, so only it locks
    # (a second launch's rank 0 then exits 2 and its launcher stops the group).
    rank0 = os.environ.get("RANK", "0") == "0"
    lock = FileLock(out / ".locks" / "train.lock", what=f"run directory {out}") if rank0 else contextlib.nullcontext()
    with lock:
        result = run_training(cfg, out, max_steps=args.max_steps, limit=args.limit, progress=not args.no_progress)
    sm = result.summary
    print(f"trained {cfg.objective.display_name()} on {cfg.task.name}: {sm.get('optimizer_steps')} steps, "
          f"{sm.get('prompts_seen')} prompts, {sm.get('train_wall_time_s', 0.0):.0f}s")
    print(f"  run dir:  {result.run_dir} (train_summary.json, telemetry.jsonl)")
    if result.model_dir is not None:
        print(f"  model:    {result.model_dir}")
    return 0


def cmd_eval(args) -> int:
    """`distill-bench eval MODEL --tasks ...`: validate everything, then evaluate through the pipeline."""
    import os

    import torch
    import yaml

    from harness.config import EvalConfig, ModelSpec, TaskConfig, apply_overrides, validate
    from harness.errors import ConfigError
    from harness.modeling import load_model
    from harness.paths import data_dir as resolve_data_dir
    from harness.pipeline import baseline_outputs, baseline_source, evaluate_cell, pick_device, teacher_dtype

    raw: dict = {}
    if args.config:
        from harness.config import read_text_utf8, safe_load_yaml

        if not Path(args.config).is_file():
            raise ConfigError(f"--config {args.config!r} not found; pass the path to a YAML file")
        try:
            raw = safe_load_yaml(read_text_utf8(args.config, "--config")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {args.config} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {args.config} must hold a mapping at top level")
    raw = apply_overrides(raw, list(args.overrides))
    eval_cfg = validate(EvalConfig, raw.get("eval", {}), f"{args.config or '<cli>'}:eval")
    teacher_spec = validate(ModelSpec, raw["teacher"], "teacher") if raw.get("teacher") else None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    sources = {}
    for item in args.source:
        if "=" not in item:
            raise ConfigError(f"--source {item!r}: use TASK=SOURCE, e.g. gsm8k=file:data/test.jsonl")
        task, src = item.split("=", 1)
        sources[task.strip()] = src.strip()
    task_cfgs = [validate(TaskConfig, {"name": t, "eval_limit": args.limit, "eval_source": sources.get(t, "auto")},
                          f"--tasks {t}") for t in tasks]
    spec = validate(ModelSpec, {"name": args.model}, "model")
    base_spec = (validate(ModelSpec, {"name": args.baseline_model}, "--baseline-model") if args.baseline_model
                 else next((m for t in tasks if (m := getattr(eval_cfg.task_options(t), "baseline_model", None))), None)
                 or teacher_spec)
    needing = [t for t in task_cfgs if baseline_source(t.name, eval_cfg) not in (None, "references")]
    if needing and base_spec is None:
        raise ConfigError(f"task {needing[0].name} compares against a baseline model's outputs: pass --baseline-model MODEL "
                          "or a `teacher:` in --config, or (where the task allows it) compare with the references, "
                          "e.g. eval.dialogsum.baseline=references")
    device = pick_device()
    model, tok = load_model(spec, dtype=torch.float32, device=str(device))
    # The teacher (diagnostics, default baseline) in the dtype a suite cell holds it in, so `eval` and `run`
    # compute the same teacher KL and the same baseline outputs.
    teacher = load_model(teacher_spec, dtype=teacher_dtype(device), device=str(device))[0] if teacher_spec is not None else None
    data_dir = resolve_data_dir(args.data_dir)
    outputs = None
    if needing:
        base_dtype = teacher_dtype(device) if base_spec is teacher_spec else torch.float32
        base_model, base_tok = load_model(base_spec, dtype=base_dtype, device=str(device))
        outputs = {t.name: baseline_outputs(base_model, base_tok, t, eval_cfg, data_dir, progress=not args.no_progress)
                   for t in needing}
        del base_model
    results = evaluate_cell(model, tok, task_cfgs, eval_cfg, Path(args.output_dir), data_dir=data_dir, teacher=teacher,
                            baseline_outputs=outputs, progress=not args.no_progress,
                            baseline_name=(base_spec.name or str(base_spec)) if base_spec is not None else None,
                            weights_from_checkpoint=True)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun every rank evaluated its share; rank 0 wrote the records and reports them
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    from harness.data import get_task

    for t in task_cfgs:
        agg = results[t.name]
        shown = [f"{m.name} {agg[m.name]:.4g}" for m in get_task(t.name).metrics if isinstance(agg.get(m.name), (int, float))]
        print(f"{t.name}: {', '.join(shown) or 'no headline metric'} (n={agg.get('n', agg.get('n_problems'))}, "
              f"protocol {agg['protocol']['protocol_hash']})")
    diag = results.get("diagnostics")
    if diag:
        print("diagnostics: " + ", ".join(f"{k} {v:.4g}" for k, v in diag.items() if isinstance(v, (int, float))))
    print(f"records: {Path(args.output_dir) / 'eval'}/<task>.jsonl, aggregates <task>.json")
    return 0


def cmd_run(args) -> int:
    from harness.suite import run_suite

    if args.address is not None and args.executor != "ray":
        raise ConfigError(f"--address {args.address!r} only applies to --executor ray; add --executor ray or drop --address")
    execute = None
    if args.executor == "ray":
        from harness.ray_executor import check_ray_available, run_on_ray

        check_ray_available()  # before the suite is even read

        def execute(runner, cells) -> dict[str, str]:
            return run_on_ray(runner, cells, address=args.address, plugins=list(args.plugin),
                              progress=not args.no_progress)["failed"]

    return run_suite(args.suite, args.overrides, results_dir=args.results_dir, leaderboards_dir=args.leaderboards_dir,
                     data_dir=args.data_dir, shard=args.shard, dry_run=args.dry_run, progress=not args.no_progress,
                     execute=execute)


def cmd_data(args) -> int:
    from harness.datafetch import DATASETS, fetch, fetch_data_dir
    from harness.errors import DataError

    unknown = [n for n in args.names if n not in DATASETS]
    if unknown:  # refused before anything is downloaded
        raise DataError(f"nothing named {unknown} to fetch; known: {', '.join(sorted(DATASETS))}")
    target = fetch_data_dir(args.data_dir)
    for name in args.names:
        fetch(name, target, base_url=args.base_url)
    print(f"data in {target}; runs read it with --data-dir {target} or DISTILL_BENCH_DATA_DIR={target}")
    return 0


def cmd_report(args) -> int:
    from harness.report import build_report

    files = build_report([Path(r) for r in args.results] if len(args.results) > 1 else Path(args.results[0]),
                         Path(args.out), name=args.name)
    print(files.describe())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
