"""The community GSM8K protocol (lm-eval's `gsm8k` task, 5-shot) run offline on local JSONL files.

lm-eval's task YAML is copied from the installed package (so its prompt, stop strings and the
`strict-match` / `flexible-extract` filters stay exactly lm-eval's) and only the data source is
redirected to local files (`dataset_path: json`, `data_files`). The model is passed in memory
through lm-eval's `HFLM` wrapper, so nothing is loaded from the Hub.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

LOCAL_TASK_NAME = "gsm8k_local"
FILTERS = ("strict-match", "flexible-extract")


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


def run_lm_eval_gsm8k(
    model: Any,
    tokenizer: Any,
    data_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 1,
    num_fewshot: int = 5,
    max_gen_toks: int | None = None,
    apply_chat_template: bool = False,
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run lm-eval's gsm8k (5-shot by default) on `data_dir/{test,train}.jsonl` with an in-memory model.

    Returns {"strict-match": float, "flexible-extract": float, "n", "num_fewshot", "lm_eval_version"}
    (exact-match fractions; plus "samples" with lm-eval's per-example records when `log_samples`).
    `max_gen_toks` overrides lm-eval's default generation budget (256) for quick runs.
    """
    from importlib.metadata import version

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    data_dir = Path(data_dir)
    test_file, train_file = data_dir / "test.jsonl", data_dir / "train.jsonl"
    for f in (test_file, train_file):
        if not f.is_file():
            raise FileNotFoundError(f"lm-eval gsm8k needs {f} (GSM8K JSONL with question/answer)")
    device = str(next(model.parameters()).device)
    with tempfile.TemporaryDirectory(prefix="lm-eval-gsm8k-") as tmp:
        lm_eval_gsm8k_task_yaml(Path(tmp) / "tasks", test_file, train_file, cache_dir=Path(tmp) / "datasets")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        results = simple_evaluate(
            model=lm,
            tasks=[LOCAL_TASK_NAME],
            task_manager=TaskManager(include_path=str(Path(tmp) / "tasks"), include_defaults=False),
            num_fewshot=num_fewshot,
            limit=limit,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            apply_chat_template=apply_chat_template,
            log_samples=log_samples,
        )
    if results is None:  # non-zero rank under distributed lm-eval
        return {}
    task = results["results"][LOCAL_TASK_NAME]
    out: dict[str, Any] = {name: float(task[f"exact_match,{name}"]) for name in FILTERS}
    out["n"] = int(results.get("n-samples", {}).get(LOCAL_TASK_NAME, {}).get("effective", task.get("sample_len", 0)))
    out["num_fewshot"] = num_fewshot
    out["lm_eval_version"] = version("lm_eval")
    if log_samples:
        out["samples"] = results["samples"][LOCAL_TASK_NAME]
    return out
