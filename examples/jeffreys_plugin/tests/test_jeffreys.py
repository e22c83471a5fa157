"""Run the distill-bench conformance kit against the plugin (``pytest examples/jeffreys_plugin``)."""

import pytest

from distill_bench_jeffreys import Jeffreys
from objectives.conformance import assert_conformant


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_jeffreys_is_conformant(weight: float) -> None:
    assert_conformant(Jeffreys, {"forward_weight": weight}, memory=False)


def test_jeffreys_entropy_selection_hook_is_conformant() -> None:
    """The contract-v2 hook pair: weights from whole-step entropy quantiles pass the kit's row checks."""
    results = {r.name: r for r in assert_conformant(Jeffreys, {"keep_top_entropy": 0.5}, memory=False)}
    assert results["row_weights_invariance"].status == "pass"
    assert not Jeffreys().uses_row_weights()  # default 1.0: the v1 path, unchanged
