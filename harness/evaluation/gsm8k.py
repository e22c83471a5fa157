"""GSM8K answer extraction and comparison.

The extraction patterns are data (`gsm8k_extraction.yaml`): an ordered list of named regexes
(`####` marker, `\\boxed{}`, "the answer is N", last number). Extracted answers are normalised to a
canonical string ("1,000.00" -> "1000", "$18." -> "18", "\\frac{1}{2}" -> "0.5") and compared as
exact rationals, so "18.0" equals "18" and "0.5" equals "1/2".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

EXTRACTION_YAML = Path(__file__).with_name("gsm8k_extraction.yaml")


@dataclass(frozen=True)
class AnswerPattern:
    """One named extraction rule from the YAML."""

    name: str
    regex: re.Pattern[str]
    pick: Literal["first", "last"]
    latex: bool = False


@dataclass(frozen=True)
class ExtractionRules:
    number: re.Pattern[str]
    patterns: tuple[AnswerPattern, ...]
    latex_rewrites: tuple[tuple[re.Pattern[str], str], ...]


@lru_cache(maxsize=None)
def load_rules(path: str | Path = EXTRACTION_YAML) -> ExtractionRules:
    """Parse and compile the extraction YAML (cached)."""
    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    number = spec["number"]
    patterns = tuple(
        AnswerPattern(
            name=p["name"],
            # str.replace, not str.format: the regexes themselves contain braces
            regex=re.compile(p["regex"].replace("{number}", f"(?:{number})")),
            pick=p.get("pick", "last"),
            latex=bool(p.get("latex", False)),
        )
        for p in spec["patterns"]
    )
    rewrites = tuple((re.compile(src), dst) for src, dst in spec.get("latex_rewrites", []))
    return ExtractionRules(re.compile(number), patterns, rewrites)


def extract_answer(text: str | None, rules: ExtractionRules | None = None) -> str | None:
    """The final numeric answer in a model completion, canonicalised, or None when there is none."""
    return extract_answer_with_rule(text, rules)[0]


def extract_answer_with_rule(
    text: str | None, rules: ExtractionRules | None = None
) -> tuple[str | None, str | None]:
    """(answer, name of the pattern that produced it); (None, None) when nothing matched."""
    if not text:
        return None, None
    rules = rules or load_rules()
    for pattern in rules.patterns:
        matches = [m.group("answer") for m in pattern.regex.finditer(text)]
        if pattern.pick == "last":
            matches.reverse()
        for raw in matches:  # e.g. a \boxed{} without a number falls through to the next match
            if pattern.latex:
                raw = _number_in_latex(raw, rules)
                if raw is None:
                    continue
            return normalize_number(raw), pattern.name
    return None, None


def gold_answer(answer_field: str) -> str:
    """The reference answer of a GSM8K row: the text after the last `####`, canonicalised."""
    if "####" in answer_field:
        return normalize_number(answer_field.rsplit("####", 1)[1].strip())
    found = extract_answer(answer_field)
    if found is None:
        raise ValueError(f"no final answer (`#### N`) in GSM8K answer field: {answer_field[-80:]!r}")
    return found


def score_gsm8k(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score generations; each record has `id`, `prompt`, `output` and `target` (canonical or `#### N`).

    Returns (aggregate {accuracy, n, protocol}, rows {id, prompt, output, extracted, rule, target, correct}),
    the layout of DESIGN.md's gsm8k results.
    """
    rows = []
    for rec in records:
        target = str(rec["target"])
        target = gold_answer(target) if "####" in target else normalize_number(target)
        extracted, rule = extract_answer_with_rule(rec["output"])
        rows.append({"id": rec["id"], "prompt": rec.get("prompt", ""), "output": rec["output"],
                     "extracted": extracted, "rule": rule, "target": target,
                     "correct": answers_match(extracted, target)})
    n = len(rows)
    aggregate = {
        "accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "n": n,
        "protocol": {"extraction": [p.name for p in load_rules().patterns], "comparison": "exact rational"},
    }
    return aggregate, rows


def answers_match(pred: str | None, target: str | None) -> bool:
    """Numeric equality when both sides parse as numbers, else case-insensitive string equality."""
    if pred is None or target is None:
        return False
    a, b = to_fraction(pred), to_fraction(target)
    if a is not None and b is not None:
        return a == b
    return _strip(pred).lower() == _strip(target).lower()


def normalize_number(raw: str) -> str:
    """Canonical text for a number: no separators/currency/trailing period; integers without '.0'."""
    value = to_fraction(raw)
    if value is None:
        return _strip(raw)
    return format_fraction(value)


def to_fraction(raw: str) -> Fraction | None:
    """Parse '1,000', '$18.', '-3.50', '3/4' exactly; None when `raw` is not a plain number."""
    text = _strip(raw)
    if not text:
        return None
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return Fraction(Fraction(num), Fraction(den))
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def format_fraction(value: Fraction) -> str:
    """Integer, terminating decimal, or 'p/q' for repeating decimals."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    # Terminating decimal: scale to an integer, then place the point.
    digits = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        digits += 1
    sign = "-" if scaled < 0 else ""
    body = str(abs(scaled.numerator)).rjust(digits + 1, "0")
    return f"{sign}{body[:-digits]}.{body[-digits:]}"


def _strip(raw: str) -> str:
    text = raw.strip().replace(",", "").replace("$", "").replace(" ", "")
    return text.rstrip(".")


def _number_in_latex(raw: str, rules: ExtractionRules) -> str | None:
    text = raw
    for pattern, replacement in rules.latex_rewrites:
        text = pattern.sub(replacement, text)
    found = rules.number.search(text)
    return found.group(0) if found else None
