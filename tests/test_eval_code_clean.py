"""Completion cleaning: fences, prose, body-only vs full programs, stop sequences."""

from __future__ import annotations

import yaml

from harness.evaluation.code_clean import (
    RULES_YAML,
    clean_completion,
    extract_fenced_code,
    humaneval_program,
    load_rules,
    truncate_at_stops,
)

PROMPT = '''from typing import List


def helper(x: int) -> int:
    return x + 1


def add_all(xs: List[int]) -> int:
    """Sum of helper(x) for x in xs."""
'''
PROBLEM = {"prompt": PROMPT, "entry_point": "add_all",
           "test": "def check(candidate):\n    assert candidate([1, 2]) == 5\n"}


def _run(program: str) -> int:
    namespace: dict = {}
    exec(compile(program, "<test>", "exec"), namespace)  # trusted test code only
    return namespace["add_all"]([1, 2])


def test_body_only_continuation_is_appended_and_cut_at_stops() -> None:
    completion = "    return sum(helper(x) for x in xs)\n\n\ndef unrelated():\n    pass\n\nprint(add_all([1]))\n"
    program = clean_completion(PROMPT, completion, "add_all")
    assert program.startswith(PROMPT)
    assert "unrelated" not in program and "print(" not in program
    assert _run(program) == 5


def test_unindented_body_is_reindented() -> None:
    program = clean_completion(PROMPT, "total = 0\nfor x in xs:\n    total += helper(x)\nreturn total\n", "add_all")
    assert _run(program) == 5


def test_fenced_full_function_with_prose() -> None:
    completion = (
        "Sure! Here is the implementation:\n\n```python\nfrom typing import List\n\n"
        "def add_all(xs: List[int]) -> int:\n    return sum(helper(x) for x in xs)\n\n"
        "print(add_all([1, 2]))\n```\n\nThis works because helper adds one to each element."
    )
    program = clean_completion(PROMPT, completion, "add_all")
    assert "Sure!" not in program and "This works" not in program and "print(" not in program
    # the prompt's preamble (imports, helper) is kept because the completion relies on `helper`
    assert "def helper" in program
    assert program.count("def add_all") == 1
    assert _run(program) == 5


def test_unfenced_full_program_with_prose_around() -> None:
    completion = (
        "Here you go.\nimport math\n\ndef add_all(xs):\n    return sum(helper(x) for x in xs)\n\n"
        "def extra(y):\n    return y\n\nThe function sums the values."
    )
    program = clean_completion(PROMPT, completion, "add_all")
    assert "Here you go" not in program and "sums the values" not in program
    assert "def extra" in program  # helpers after the entry point survive in program mode
    assert _run(program) == 5


def test_picks_fence_that_defines_entry_point() -> None:
    text = "```\npip install foo\n```\n\n```python\ndef add_all(xs):\n    return 0\n```"
    assert extract_fenced_code(text, "add_all").startswith("def add_all")
    assert extract_fenced_code("no fence at all", "add_all") is None
    # an unterminated fence (generation hit its length limit) still counts
    assert extract_fenced_code("```python\ndef add_all(xs):\n    return 1", "add_all").endswith("return 1")


def test_truncate_at_stops() -> None:
    assert truncate_at_stops("a\nb\ndef c", ["\ndef ", "\nb"]) == "a"
    assert truncate_at_stops("abc", ["\nx"]) == "abc"
    assert truncate_at_stops("def f():\n  pass\ndef g", ["\ndef "], start=3) == "def f():\n  pass"


def test_humaneval_program_appends_tests() -> None:
    program = humaneval_program(PROBLEM, "    return sum(helper(x) for x in xs)\n")
    assert program.rstrip().endswith("check(add_all)")
    exec(compile(program, "<test>", "exec"), {})  # the check passes


def test_stops_are_data(tmp_path) -> None:
    spec = yaml.safe_load(RULES_YAML.read_text())
    assert "\ndef " in spec["continuation_stops"] and "\nif __name__" in spec["program_stops"]
    spec["continuation_stops"] = ["\n    # STOP"]
    alt = tmp_path / "rules.yaml"
    alt.write_text(yaml.safe_dump(spec))
    completion = "    return 1\n    # STOP\n    return 2\n"
    assert "return 2" not in clean_completion(PROMPT, completion, "add_all", load_rules(alt))
    assert "return 2" in clean_completion(PROMPT, completion, "add_all")
