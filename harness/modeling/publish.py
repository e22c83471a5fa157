"""Build a directory once, atomically, even when several processes ask for it at the same time.

Converted GGUF checkpoints and pruned students live in the cache dir and are shared by every run
(suite shards run in parallel). A directory is built in a temporary sibling, a provenance file
is written last, and the temporary directory is renamed into place: readers therefore see either
nothing or a complete checkpoint. A file lock keeps concurrent processes from doing the same
minutes-long work twice; the rename is still safe if the lock is ineffective (e.g. some network
file systems), because renaming onto a non-empty directory fails and the loser just discards its copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from harness.errors import ConfigError

PROVENANCE_FILE = "distill_bench_provenance.json"


def read_provenance(directory: Path) -> dict[str, Any] | None:
    """The provenance dict of a directory built by `publish_dir`, or None when it is not one."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _check_existing(out_dir: Path, provenance: dict[str, Any]) -> bool:
    """True when out_dir is already the requested build; raises when it holds something else."""
    if not out_dir.exists():
        return False
    found = read_provenance(out_dir)
    if found is None:
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            return False  # an empty directory (e.g. made by mkdir) is fine to replace
        raise ConfigError(
            f"{out_dir} exists but was not written by distill-bench; remove it or choose another output directory"
        )
    if found != provenance:
        raise ConfigError(
            f"{out_dir} already holds a different build ({found}); wanted {provenance}. "
            "Remove it or choose another output directory"
        )
    return True


def publish_dir(out_dir: str | os.PathLike, build: Callable[[Path], None], provenance: dict[str, Any]) -> Path:
    """Return `out_dir`, calling `build(tmp_dir)` and renaming tmp_dir into place if it is not built yet.

    `provenance` (JSON-serialisable) identifies the build; an existing directory with a different
    provenance is refused rather than silently reused or overwritten.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if _check_existing(out_dir, provenance):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if _check_existing(out_dir, provenance):  # built by another process while we waited
            return out_dir
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        try:
            build(tmp)
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            if out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            try:
                os.rename(tmp, out_dir)
            except OSError:
                if not _check_existing(out_dir, provenance):  # lost a race to an identical build: fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
