"""Read record files: JSON lines (optionally gzipped), JSON (`{"instances": [...]}` or a list), Parquet."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from harness.errors import DataError

FORMATS = ("jsonl", "json_instances", "json", "parquet")


def detect_format(path: Path) -> str:
    """Format from the file name: .jsonl[.gz] -> jsonl, .json -> json, .parquet -> parquet."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if name.endswith((".json", ".json.gz")):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    raise DataError(f"cannot tell the format of {path}: use a .jsonl, .jsonl.gz, .json or .parquet file")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    """A JSON list of records, or the Veto paper's `{"instances": [...]}` wrapper."""
    with _open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("instances"), list):
        data = data["instances"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of objects or {{\"instances\": [objects]}}")
    return data


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{path}: cannot read as Parquet ({exc})") from None


def read_records(path: str | Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """All records of a data file as dicts, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    fmt = detect_format(path) if fmt == "auto" else fmt
    try:
        if fmt == "jsonl":
            return _read_jsonl(path)
        if fmt in ("json", "json_instances"):
            return _read_json(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"data file {path} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"data file {path}: damaged gzip stream ({exc}); fetch it again") from None
    if fmt == "parquet":
        return _read_parquet(path)
    raise DataError(f"unknown data format {fmt!r}; one of {FORMATS}")
