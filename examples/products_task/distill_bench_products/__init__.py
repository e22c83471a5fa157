"""An out-of-tree distill-bench task: one-digit products, from reasoning-gym's `products` generator.

Installing this package is all it takes: distill-bench finds the task through the entry point
`distill_bench.tasks` (`TASK_YAML`), reads its data through `load` (named in the YAML) and scores
it with `distill_bench_products.scoring`. No harness file changes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TASK_YAML = Path(__file__).with_name("products.yaml")

# reasoning-gym's own output instruction; the task's template adds the one the teacher was measured with.
_RG_SUFFIX = re.compile(r"\s*Give only the result as your final answer\.\s*$")
_GENERATOR_SIZE = 2000  # random draws of one fixed seed; enough to meet all 100 pairs (checked below)


def split_of(a: int, b: int) -> str:
    """The fixed split of a pair: every fourth pair (by 10a + b) is held out for evaluation (25 of 100)."""
    return "eval" if (10 * a + b) % 4 == 1 else "train"


def load(split: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of one split: the distinct pairs reasoning-gym generates, in pair order."""
    import reasoning_gym

    pairs: dict[tuple[int, int], dict[str, Any]] = {}
    data = reasoning_gym.create_dataset("products", size=_GENERATOR_SIZE, seed=int(options.get("seed", 0)),
                                        min_terms=2, max_terms=2, min_digits=1, max_digits=1)
    for item in data:
        a, b = (int(x) for x in item["metadata"]["expression"].split("*"))
        pairs.setdefault((a, b), {"id": f"products-{a}x{b}", "question": _RG_SUFFIX.sub("", item["question"]),
                                  "answer": str(item["answer"]).strip()})
    if len(pairs) != 100:
        raise RuntimeError(f"reasoning-gym produced {len(pairs)} distinct one-digit pairs, expected 100")
    return [rec for (a, b), rec in sorted(pairs.items()) if split_of(a, b) == split]
