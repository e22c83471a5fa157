"""train.log_with: telemetry also goes to Accelerate's trackers; TensorBoard's event files read back offline."""

from __future__ import annotations

import json

import pytest

from harness.config import TrainConfig
from harness.errors import ConfigError
from harness.training.loop import train
from tests.training_helpers import make_setup, run_config


def test_tensorboard_scalars_match_telemetry(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install -e '.[trackers]' (CI installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = run_config(tiny_model_dir, log_with=["tensorboard"])
    train(cfg, tmp_path / "run", make_setup(tiny_model_dir), progress=False, save_model=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "telemetry.jsonl").read_text().splitlines()]
    assert len(rows) == 3  # 12 examples, batch 4, one epoch
    event_dirs = {p.parent for p in (tmp_path / "run" / "trackers").rglob("events.out.tfevents.*")}
    scalars: dict[str, list[tuple[int, float]]] = {}
    for d in event_dirs:
        acc = EventAccumulator(str(d))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    for key in ("loss", "grad_norm", "lr"):
        logged = sorted(scalars[key])
        assert [s for s, _ in logged] == [r["step"] for r in rows]
        assert [v for _, v in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)


def test_unknown_or_uninstalled_trackers_are_refused_up_front(tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker"):
        TrainConfig(log_with=["tensorbored"])
    import harness.training.trackers as trackers

    monkeypatch.setattr(trackers, "_available", lambda name: False)
    with pytest.raises(ConfigError, match="pip install wandb"):
        trackers.Trackers(["wandb"], tmp_path, "run", {})
