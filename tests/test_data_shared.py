"""The real data files in the shared data directory (skipped where it is absent)."""

from __future__ import annotations

import pytest

from harness.data import load_examples


@pytest.mark.parametrize(
    "task, split, source, n",
    [
        ("gsm8k", "train", "gsm8k_local", 7473),
        ("gsm8k", "eval", "gsm8k_local", 1319),
        ("gsm8k", "train", "veto_gsm_1k", 1000),
        ("gsm8k", "eval", "veto_gsm_1k", 473),
        ("dialogsum", "train", "dialogsum_local", 500),
        ("dialogsum", "eval", "dialogsum_local", 500),
        ("dialogsum", "train", "veto_summ_1k", 1000),
        ("humaneval", "train", "veto_wizardcoder", 1000),
    ],
)
def test_real_files(shared_data_dir, task, split, source, n):
    if not (shared_data_dir / "gsm8k").is_dir():
        pytest.skip(f"{shared_data_dir} lacks the expected layout")
    ex = load_examples(task, split, source, data_dir=shared_data_dir)
    assert len(ex) == n
    assert len({e.id for e in ex}) == n
    if split == "train":
        assert all(e.response for e in ex)
    if task == "gsm8k":
        assert all(e.answer for e in ex)
        assert all(e.prompt.startswith("Q: ") and e.prompt.endswith(" \n\nA:") for e in ex)
    if (task, split) == ("dialogsum", "eval"):
        assert all(len(e.references) == 3 for e in ex)


def test_real_auto_uses_local_files(shared_data_dir):
    assert load_examples("gsm8k", "eval", "auto", data_dir=shared_data_dir, limit=1)[0].meta["source"] == "gsm8k_local"
    assert load_examples("dialogsum", "train", "auto", data_dir=shared_data_dir, limit=1)[0].meta["source"] == "veto_summ_1k"
