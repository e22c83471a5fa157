"""Worker for the contract-v2 multi-process test: whole-step row weights need every process's rows.

`torchrun --nproc_per_node N tests/dist_worker_v2.py MODEL_DIR RUN_DIR`
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from harness.training.distributed import init_distributed  # noqa: E402
from harness.training.loop import train  # noqa: E402
from objectives.base import SequenceSource, register_objective  # noqa: E402
from objectives.tip import TIP  # noqa: E402
from tests.training_helpers import make_setup, run_config  # noqa: E402


@register_objective
class TIPOnReferences(TIP):
    """TIP's whole-step quantile selection on ground-truth sequences (identical for any process count)."""

    name = "test_tip_on_references"
    source = SequenceSource.GROUND_TRUTH


def main() -> None:
    model_dir, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    dist = init_distributed(force_cpu=True)
    setup = make_setup(model_dir)
    cfg = run_config(model_dir, "test_tip_on_references", {"entropy_top_fraction": 0.3}, batch_size=4,
                     micro_batch_size=1)
    train(cfg, run_dir, setup, max_steps=2, progress=False, dist=dist)
    if dist.is_main:
        torch.save(setup.student.state_dict(), run_dir / "final_state.pt")


if __name__ == "__main__":
    main()
