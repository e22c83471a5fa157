"""Small template-generated offline data sets, clearly labelled synthetic.

No installable package ships DialogSum or code-instruction training data, yet the default suite
must run on a machine without the data dir. These generators produce short two-person dialogues
with a reference summary (DialogSum markup: `#Person1#`, `#Person2#`) and simple function-writing
instructions with correct reference solutions plus an assert-based test. They are stand-ins to
exercise the pipeline, not benchmarks: every example carries `meta["synthetic"] = True`.
Each example is a pure function of (split, index), so sets are deterministic and stable in size.
"""

from __future__ import annotations

import random
from typing import Any, Callable

# ----------------------------------------------------------------------------- dialogues

_NAMES = ["Tom", "Anna", "Mr. Smith", "Linda", "Jack", "Mary", "Dr. Brown", "Susan", "Peter", "Kate"]
_FOODS = ["pizza", "sushi", "pasta", "salad", "noodles", "sandwiches"]
_PLACES = ["the train station", "the library", "the post office", "the museum", "the bank", "the hospital"]
_DIRS = ["turn left at the corner", "go straight for two blocks", "take the second right", "cross the bridge"]
_ITEMS = ["jacket", "laptop", "pair of shoes", "camera", "lamp", "backpack"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
_SYMPTOMS = ["a headache", "a sore throat", "a cough", "a fever", "back pain"]
_ACTIVITIES = ["go hiking", "see a movie", "visit the zoo", "play tennis", "have a picnic"]
_PROBLEMS = ["it is too small", "it does not work", "the color is wrong", "it arrived broken"]


def _dialogue_restaurant(r: random.Random) -> tuple[str, str, str]:
    n, hour, food = r.randint(2, 8), r.randint(5, 9), r.choice(_FOODS)
    lines = [
        "#Person1#: Good evening, I'd like to book a table, please.",
        "#Person2#: Of course. For how many people?",
        f"#Person1#: For {n} people, at {hour} o'clock tonight.",
        f"#Person2#: That's fine. We have a special on {food} today.",
        f"#Person1#: Great, we'll try the {food}. Thank you.",
    ]
    summary = f"#Person1# books a table for {n} people at {hour} o'clock and will try the {food}."
    return "\n".join(lines), summary, "booking a table"


def _dialogue_directions(r: random.Random) -> tuple[str, str, str]:
    place, d, minutes = r.choice(_PLACES), r.choice(_DIRS), r.randint(3, 20)
    lines = [
        f"#Person1#: Excuse me, could you tell me how to get to {place}?",
        f"#Person2#: Sure. Just {d}.",
        "#Person1#: Is it far from here?",
        f"#Person2#: No, it's about {minutes} minutes on foot.",
        "#Person1#: Thanks a lot.",
    ]
    summary = f"#Person2# tells #Person1# the way to {place}, which is about {minutes} minutes away on foot."
    return "\n".join(lines), summary, "asking for directions"


def _dialogue_shopping(r: random.Random) -> tuple[str, str, str]:
    item, price, discount = r.choice(_ITEMS), r.randint(20, 200), r.choice([10, 15, 20, 25])
    lines = [
        f"#Person1#: How much is this {item}?",
        f"#Person2#: It's {price} dollars, but today everything is {discount} percent off.",
        "#Person1#: That sounds good. Can I pay by card?",
        "#Person2#: Yes, of course.",
        f"#Person1#: Then I'll take the {item}.",
    ]
    summary = f"#Person1# buys a {item} that costs {price} dollars with a {discount} percent discount, paying by card."
    return "\n".join(lines), summary, "shopping"


def _dialogue_doctor(r: random.Random) -> tuple[str, str, str]:
    symptom, days, name = r.choice(_SYMPTOMS), r.randint(2, 7), r.choice(_NAMES)
    lines = [
        f"#Person1#: Hello, I'm {name}. I've had {symptom} for {days} days.",
        "#Person2#: I see. Have you taken any medicine?",
        "#Person1#: Only some tea and rest.",
        "#Person2#: I'll give you a prescription. Come back if it isn't better in a week.",
    ]
    summary = f"{name} has had {symptom} for {days} days, and the doctor gives a prescription."
    return "\n".join(lines), summary, "seeing a doctor"


def _dialogue_weekend(r: random.Random) -> tuple[str, str, str]:
    act, day, other = r.choice(_ACTIVITIES), r.choice(_DAYS), r.choice(_ACTIVITIES)
    while other == act:
        other = r.choice(_ACTIVITIES)
    lines = [
        f"#Person1#: Do you want to {act} on {day}?",
        f"#Person2#: I'd rather {other}. What do you think?",
        f"#Person1#: OK, let's {other} first and {act} another time.",
        f"#Person2#: Deal. See you on {day}.",
    ]
    summary = f"#Person1# and #Person2# agree to {other} on {day} instead of going to {act}."
    return "\n".join(lines), summary, "weekend plans"


def _dialogue_return(r: random.Random) -> tuple[str, str, str]:
    item, problem, days = r.choice(_ITEMS), r.choice(_PROBLEMS), r.randint(2, 30)
    refund = r.random() < 0.5
    outcome = "a full refund" if refund else "an exchange"
    lines = [
        f"#Person1#: I'd like to return this {item}. I bought it {days} days ago.",
        "#Person2#: What's wrong with it?",
        f"#Person1#: {problem[0].upper() + problem[1:]}.",
        f"#Person2#: I'm sorry. We can offer you {outcome}.",
        "#Person1#: That's fine, thank you.",
    ]
    summary = f"#Person1# returns a {item} bought {days} days ago because {problem}, and gets {outcome}."
    return "\n".join(lines), summary, "returning an item"


_DIALOGUES: list[Callable[[random.Random], tuple[str, str, str]]] = [
    _dialogue_restaurant, _dialogue_directions, _dialogue_shopping,
    _dialogue_doctor, _dialogue_weekend, _dialogue_return,
]


def synthetic_dialogues(split: str, size: int) -> list[dict[str, Any]]:
    """`size` dialogues for `split` (train and eval use disjoint random streams)."""
    rows = []
    for i in range(size):
        r = random.Random(f"synthetic_dialogues/{split}/{i}")
        dialogue, summary, topic = _DIALOGUES[i % len(_DIALOGUES)](r)
        rows.append({"id": f"synthetic_dialogues-{split}-{i}", "dialogue": dialogue, "summary": summary, "topic": topic})
    return rows


# ----------------------------------------------------------------------------- code

def _code_add(r: random.Random, i: int) -> dict[str, str]:
    k, name = r.randint(1, 99), f"add_constant_{i}"
    return {
        "instruction": f"Write a Python function `{name}(x)` that returns x plus {k}.",
        "code": f"def {name}(x):\n    return x + {k}\n",
        "test": f"assert {name}(1) == {1 + k}\nassert {name}(-{k}) == 0\n",
        "entry_point": name,
    }


def _code_multiples(r: random.Random, i: int) -> dict[str, str]:
    k, name = r.randint(2, 9), f"count_multiples_{i}"
    return {
        "instruction": f"Write a Python function `{name}(numbers)` that returns how many integers in the list "
        f"`numbers` are divisible by {k}.",
        "code": f"def {name}(numbers):\n    return sum(1 for n in numbers if n % {k} == 0)\n",
        "test": f"assert {name}([]) == 0\nassert {name}([{k}, {k + 1}, {2 * k}, 0]) == 3\n",
        "entry_point": name,
    }


def _code_reverse_words(r: random.Random, i: int) -> dict[str, str]:
    sep = r.choice([" ", ",", "-"])
    name = f"reverse_words_{i}"
    return {
        "instruction": f"Write a Python function `{name}(text)` that splits `text` on {sep!r}, reverses the "
        f"order of the parts and joins them again with {sep!r}.",
        "code": f"def {name}(text):\n    return {sep!r}.join(reversed(text.split({sep!r})))\n",
        "test": f"assert {name}('a{sep}b{sep}c') == 'c{sep}b{sep}a'\nassert {name}('x') == 'x'\n",
        "entry_point": name,
    }


def _code_clamp(r: random.Random, i: int) -> dict[str, str]:
    lo = r.randint(-20, 0)
    hi = lo + r.randint(1, 40)
    name = f"clamp_{i}"
    return {
        "instruction": f"Write a Python function `{name}(x)` that returns x limited to the range [{lo}, {hi}]: "
        f"values below {lo} become {lo} and values above {hi} become {hi}.",
        "code": f"def {name}(x):\n    return max({lo}, min({hi}, x))\n",
        "test": f"assert {name}({lo - 5}) == {lo}\nassert {name}({hi + 5}) == {hi}\nassert {name}({lo}) == {lo}\n",
        "entry_point": name,
    }


def _code_count_char(r: random.Random, i: int) -> dict[str, str]:
    ch, name = r.choice("aeiouxyz"), f"count_char_{i}"
    return {
        "instruction": f"Write a Python function `{name}(s)` that returns the number of times the letter "
        f"{ch!r} occurs in the string `s`, ignoring case.",
        "code": f"def {name}(s):\n    return s.lower().count({ch!r})\n",
        "test": f"assert {name}('') == 0\nassert {name}('{ch}{ch.upper()}b{ch}') == 3\n",
        "entry_point": name,
    }


def _code_sum_above(r: random.Random, i: int) -> dict[str, str]:
    k, name = r.randint(0, 10), f"sum_above_{i}"
    return {
        "instruction": f"Write a Python function `{name}(values)` that returns the sum of the numbers in "
        f"`values` that are strictly greater than {k}.",
        "code": f"def {name}(values):\n    return sum(v for v in values if v > {k})\n",
        "test": f"assert {name}([]) == 0\nassert {name}([{k}, {k + 1}, {k + 2}]) == {2 * k + 3}\n",
        "entry_point": name,
    }


_CODE: list[Callable[[random.Random, int], dict[str, str]]] = [
    _code_add, _code_multiples, _code_reverse_words, _code_clamp, _code_count_char, _code_sum_above,
]


def synthetic_code(split: str, size: int) -> list[dict[str, Any]]:
    """`size` function-writing instructions with reference solutions (`response`) and tests."""
    rows = []
    offset = 0 if split == "train" else 100_000  # distinct function names across splits
    for i in range(size):
        r = random.Random(f"synthetic_code/{split}/{i}")
        item = _CODE[i % len(_CODE)](r, offset + i)
        rows.append({
            "id": f"synthetic_code-{split}-{i}",
            "instruction": item["instruction"],
            "response": f"```python\n{item['code']}```",
            "code": item["code"],
            "test": item["test"],
            "entry_point": item["entry_point"],
        })
    return rows
