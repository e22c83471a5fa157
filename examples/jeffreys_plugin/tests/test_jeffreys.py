"""Run the distill-bench conformance kit against the plugin (``pytest examples/jeffreys_plugin``)."""

import pytest

from distill_bench_jeffreys import Jeffreys, reference
from objectives.conformance import assert_conformant


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_jeffreys_is_conformant(weight: float) -> None:
    assert_conformant(Jeffreys, {"forward_weight": weight}, reference=reference, memory=False)
