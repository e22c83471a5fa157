"""The community GSM8K protocol (lm-eval's `gsm8k` task, 5-shot) on the same data as the paper protocol.

lm-eval's task YAML is copied from the installed package (so its prompt, stop strings and the
`strict-match` / `flexible-extract` filters stay exactly lm-eval's). Where its data come from
follows the task's GSM8K eval source (`lm_eval_data_source`): local GSM8K JSONL (`gsm8k_local`, or
`auto` resolving to it) redirects the task to those files (`dataset_path: json`, `data_files`);
the `hub` source keeps lm-eval's own Hub dataset (openai/gsm8k). The model is passed in memory
through lm-eval's `HFLM` wrapper, so no model is loaded from the Hub.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import yaml

LOCAL_TASK_NAME = "gsm8k_local"
HUB_TASK_NAME = "gsm8k"
FILTERS = ("strict-match", "flexible-extract")
# GSM8K sources whose files are GSM8K itself (question + `#### N` answer, test and train splits):
# lm-eval needs the test split to score and the train split for its few-shot examples.
_LOCAL_GSM8K_SOURCE = "gsm8k_local"
_HUB_GSM8K_SOURCE = "hub"


def lm_eval_data_source(eval_source: str, data_dir: str | Path | None) -> tuple[str, Path | None]:
    """Where lm-eval's GSM8K reads from, by the same resolution as the paper protocol's eval source.

    Returns ("local", <dir holding test.jsonl and train.jsonl>) or ("hub", None). Raises DataError
    naming the fix when the source cannot feed lm-eval (a subset, synthetic problems, a single
    file without the train split for few-shot examples).
    """
    from harness.data import get_task
    from harness.data.examples import resolve_source
    from harness.errors import DataError

    task = get_task("gsm8k")
    ddir = Path(data_dir) if data_dir else None
    if eval_source.startswith("file:"):
        # A GSM8K test file given directly: lm-eval takes its few-shot examples from train.jsonl beside it.
        test_file = Path(eval_source[len("file:"):]).expanduser()
        if test_file.name != "test.jsonl" or not (test_file.parent / "train.jsonl").is_file():
            raise DataError(f"the lm_eval GSM8K protocol reads a directory holding test.jsonl (scored) and train.jsonl "
                            f"(few-shot examples); the eval file {test_file} is not such a test.jsonl: use GSM8K's "
                            "layout there, or drop `lm_eval` from eval.gsm8k.protocols")
        return "local", test_file.parent
    name = resolve_source(task, "eval", eval_source, ddir)
    if name == _HUB_GSM8K_SOURCE:
        return "hub", None
    if name == _LOCAL_GSM8K_SOURCE:
        src = task.sources[name]
        missing = [rel for rel in (src.splits["eval"], src.splits["train"]) if ddir is None or not (ddir / rel).is_file()]
        if missing:
            where = f"data directory {ddir}" if ddir else "the data directory (none is configured)"
            raise DataError(f"the lm_eval GSM8K protocol reads {missing} from {where}: run "
                            f"`distill-bench data fetch gsm8k --data-dir DIR` and set DISTILL_BENCH_DATA_DIR=DIR "
                            "(or use eval_source: hub online)")
        return "local", ddir / Path(src.splits["eval"]).parent
    raise DataError(f"the lm_eval GSM8K protocol needs GSM8K itself (test split to score, train split for its "
                    f"few-shot examples), but the GSM8K eval source is {name!r}: set the task's eval_source to "
                    f"`{_LOCAL_GSM8K_SOURCE}` or `{_HUB_GSM8K_SOURCE}`, or drop `lm_eval` from eval.gsm8k.protocols")


def lm_eval_task_dir() -> Path:
    """Directory of lm-eval's installed gsm8k task."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "gsm8k"


def lm_eval_gsm8k_filters() -> dict[str, dict[str, Any]]:
    """lm-eval's own filter settings for gsm8k, read from its task YAML: {name: regex filter kwargs}."""
    spec = yaml.safe_load((lm_eval_task_dir() / "gsm8k.yaml").read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for entry in spec["filter_list"]:
        regex = next(step for step in entry["filter"] if step["function"] == "regex")
        out[entry["name"]] = {k: v for k, v in regex.items() if k != "function"}
    return out


def lm_eval_gsm8k_task_yaml(
    local_dir: str | Path,
    test_file: str | Path,
    train_file: str | Path,
    task_name: str = LOCAL_TASK_NAME,
    cache_dir: str | Path | None = None,
) -> str:
    """Write `<local_dir>/<task_name>.yaml`, lm-eval's gsm8k task over local JSONL; return its path.

    The files need GSM8K's fields (`question`, `answer` ending in `#### N`); the train file provides
    the few-shot examples. `cache_dir` keeps the `datasets` cache out of ~/.cache when given.
    """
    spec = yaml.safe_load((lm_eval_task_dir() / "gsm8k.yaml").read_text(encoding="utf-8"))
    spec.pop("tag", None)  # the local copy must not join the upstream task group
    spec.pop("dataset_name", None)
    spec["task"] = task_name
    spec["dataset_path"] = "json"
    kwargs: dict[str, Any] = {"data_files": {"train": str(Path(train_file).resolve()),
                                             "test": str(Path(test_file).resolve())}}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    spec["dataset_kwargs"] = kwargs
    out_dir = Path(local_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{task_name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return str(path)


@contextlib.contextmanager
def _without_env_probe():
    """simple_evaluate ends with `add_env_info`, which runs torch's collect_env: `pip list` and other
    subprocesses, about 2 s on every call (once per evaluated cell) for an environment report that
    nothing here keeps (a run records its environment once, in environment.json). Replaced, for the
    call only, by the cheap part of that record."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info

    def cheap_env_info(storage: dict[str, Any]) -> None:
        from importlib.metadata import version

        storage.update({"pretty_env_info": "not collected (distill-bench records environment.json)",
                        "lm_eval_version": version("lm_eval")})

    evaluator.add_env_info = cheap_env_info
    try:
        yield
    finally:
        evaluator.add_env_info = original


def run_lm_eval_gsm8k(
    model: Any,
    tokenizer: Any,
    data_dir: str | Path | None,
    limit: int | None = None,
    batch_size: int | str = 1,
    num_fewshot: int = 5,
    max_gen_toks: int | None = None,
    apply_chat_template: bool = False,
    log_samples: bool = False,
    source: str = "local",
) -> dict[str, Any]:
    """Run lm-eval's gsm8k (5-shot by default) on `data_dir/{test,train}.jsonl` with an in-memory model.

    `source="hub"` runs lm-eval's own gsm8k task on its Hub dataset instead (`data_dir` unused).

    Returns {"strict-match": float, "flexible-extract": float, "n", "num_fewshot", "lm_eval_version"}
    (exact-match fractions; plus "samples" with lm-eval's per-example records when `log_samples`).
    `max_gen_toks` overrides lm-eval's default generation budget (256) for quick runs.
    `batch_size="auto"` (`eval.batch_size: auto`) is lm-eval's own detection on CUDA (it tries batches
    from 64 rows of the full context down until one fits); elsewhere it is `harness.batch_sizing.FALLBACK_BATCH` (8), since on the host that
    probe has no out-of-memory error to back off from and would first allocate 64 full-context rows.
    """
    from importlib.metadata import version

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if source not in ("local", "hub"):
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")
    if source == "local":
        data_dir = Path(data_dir) if data_dir is not None else None
        if data_dir is None:
            raise FileNotFoundError("lm-eval gsm8k with local data needs a directory holding test.jsonl and train.jsonl")
        test_file, train_file = data_dir / "test.jsonl", data_dir / "train.jsonl"
        for f in (test_file, train_file):
            if not f.is_file():
                raise FileNotFoundError(f"lm-eval gsm8k needs {f} (GSM8K JSONL with question/answer)")
    device = str(next(model.parameters()).device)
    if batch_size == "auto" and not device.startswith("cuda"):
        from harness.batch_sizing import FALLBACK_BATCH

        batch_size = FALLBACK_BATCH
    task_name = LOCAL_TASK_NAME if source == "local" else HUB_TASK_NAME
    with tempfile.TemporaryDirectory(prefix="lm-eval-gsm8k-") as tmp:
        if source == "local":
            lm_eval_gsm8k_task_yaml(Path(tmp) / "tasks", test_file, train_file, cache_dir=Path(tmp) / "datasets")
            manager = TaskManager(include_path=str(Path(tmp) / "tasks"), include_defaults=False)
        else:
            manager = TaskManager()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        with _without_env_probe():
            results = simple_evaluate(
                model=lm,
                tasks=[task_name],
                task_manager=manager,
                num_fewshot=num_fewshot,
                limit=limit,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
                apply_chat_template=apply_chat_template,
                log_samples=log_samples,
            )
    if results is None:  # non-zero rank under distributed lm-eval
        return {}
    task = results["results"][task_name]
    out: dict[str, Any] = {name: float(task[f"exact_match,{name}"]) for name in FILTERS}
    out["n"] = int(results.get("n-samples", {}).get(task_name, {}).get("effective", task.get("sample_len", 0)))
    out["num_fewshot"] = num_fewshot
    out["max_gen_toks"] = max_gen_toks  # None: lm-eval's own budget for the task
    out["lm_eval_version"] = version("lm_eval")
    out["data_source"] = "hub: openai/gsm8k (lm-eval's own task)" if source == "hub" else f"local: {data_dir}"
    if log_samples:
        out["samples"] = results["samples"][task_name]
    return out
