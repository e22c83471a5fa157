"""Telemetry rows also go to Accelerate's experiment trackers (`train.log_with: [tensorboard, wandb, ...]`).

telemetry.jsonl stays the record the reports are built from; trackers are a view for researchers
used to TensorBoard / W&B / MLflow. Only the main process logs (Accelerate's trackers guard that
themselves too). Files of trackers that write locally go to `<run_dir>/trackers/<run_name>/`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

# The PyPI package each tracker needs, for the install hint.
_TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                     "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}


def known_trackers() -> list[str]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def _available(name: str) -> bool:
    import importlib.util

    if name == "tensorboard":  # torch's SummaryWriter needs the tensorboard package (or tensorboardX)
        return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    return importlib.util.find_spec(_TRACKER_PACKAGES.get(name, name)) is not None


class Trackers:
    """Accelerate trackers for one training run; a no-op when `names` is empty or this is not the main process."""

    def __init__(self, names: list[str], run_dir: Path, run_name: str, config: dict[str, Any], *, enabled: bool = True):
        self._trackers: list[Any] = []
        if not names or not enabled:
            return
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        missing = [n for n in names if not _available(n)]
        if missing:
            raise ConfigError(f"train.log_with names {missing}, whose packages are not installed: "
                              f"`pip install {' '.join(_TRACKER_PACKAGES.get(n, n) for n in missing)}` "
                              "(tensorboard: `pip install -e \".[trackers]\"`)")
        for name in names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(run_name, logging_dir=str(run_dir / "trackers")) if cls.requires_logging_directory \
                else cls(run_name)
            tracker.start()
            tracker.store_init_configuration(_flat_config(config))
            self._trackers.append(tracker)

    def log(self, row: dict[str, Any], step: int) -> None:
        if not self._trackers:
            return
        values = {k: float(v) for k, v in row.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "step"}
        for tracker in self._trackers:
            tracker.log(values, step=step)

    def finish(self) -> None:
        for tracker in self._trackers:
            tracker.finish()
        self._trackers = []


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Hyperparameters as flat scalars (what trackers accept): nested keys joined with '.', lists as text."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[key] = v if v is not None else "none"
        else:
            out[key] = str(v)
    return out
