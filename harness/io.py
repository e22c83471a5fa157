"""Atomic file writes and JSONL helpers: a crash never leaves a half-written result behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.errors import DiskError

TMP_SUFFIX = ".tmp"  # atomic_write_bytes' temporaries are `.<name>.<random>.tmp`; cleanup matches on it


# errno values that mean "this location cannot take the write", as opposed to a bug: they become a
# DiskError naming the path and the fix instead of a bare OSError.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


def disk_error(path: str | os.PathLike, exc: BaseException, needed_bytes: int | None = None,
               resume: str = "rerun the same command to resume; finished results are kept") -> DiskError:
    """A DiskError for a failed write at `path`: the reason, the bytes needed and free, how to resume."""
    path = Path(path)
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1][:200]
    parts = [f"writing {path} failed: {reason}"]
    if needed_bytes is not None:
        parts.append(f"needed about {_mib(needed_bytes)}")
    if free is not None:
        parts.append(f"{_mib(free)} free on that filesystem")
    if getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the directory writable or choose another --results-dir / --output-dir"
    else:
        fix = "free disk space (or choose another --results-dir / --output-dir)"
    return DiskError("; ".join(parts) + f". {fix}, then {resume}.")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temp file in the same directory, fsync, then rename over the target."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise disk_error(path, exc, len(data)) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic UTF-8 text write (see atomic_write_bytes)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row and fsync (telemetry); readers tolerate a torn last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield rows; a torn final line (crash mid-append) is skipped, a torn middle line is an error."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # last non-empty line: torn append
                return
            raise


def scan_jsonl(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(rows, problems): every line that parses as a JSON object, and one `path:line: why` entry per
    line that does not (torn, malformed, not an object, not UTF-8). For readers that must not drop
    rows silently (the report); never raises for bad content."""
    rows: list[dict] = []
    problems: list[str] = []
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problems.append(f"{path}:{i + 1}: not UTF-8; line skipped")
            continue
        except json.JSONDecodeError as exc:
            kind = "torn last line (interrupted write)" if i == last else f"malformed JSON ({exc.msg})"
            problems.append(f"{path}:{i + 1}: {kind}; line skipped")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{i + 1}: a JSON {type(row).__name__}, not an object; line skipped")
            continue
        rows.append(row)
    return rows, problems


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def remove_temporaries(directory: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Delete the leftovers of writes interrupted by a kill: atomic_write_bytes' `.*.tmp` files (and,
    via the callers' patterns, temp dirs). Only call it on a directory this process holds the lock
    of, or another writer's in-flight temporary would vanish under it. Returns what was removed."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = root.rglob(f".*{TMP_SUFFIX}") if recursive else root.glob(f".*{TMP_SUFFIX}")
    removed = []
    for p in list(found):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
