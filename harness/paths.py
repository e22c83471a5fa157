"""Where data and caches live. Everything is overridable by environment variables or options."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DISTILL_BENCH_DATA_DIR"
CACHE_DIR_ENV = "DISTILL_BENCH_CACHE"


def cache_dir() -> Path:
    """Root of converted models, derived students and generation caches (default ~/.cache/distill-bench)."""
    root = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "distill-bench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data directory (files laid out like ../shared/data), or None when none is configured.

    Order: the explicit option, $DISTILL_BENCH_DATA_DIR, then ../shared/data next to the working
    directory or next to the repository checkout (the developer and CI layout).
    """
    candidates: list[Path] = []
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    repo_root = Path(__file__).resolve().parent.parent
    candidates += [Path.cwd().parent / "shared" / "data", repo_root.parent / "shared" / "data"]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    return None
