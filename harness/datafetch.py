"""`distill-bench data fetch NAME`: put a task's data files into the data directory, verified.

Each fetchable name lists files with their path in the data directory (the layout
`harness/tasks/*.yaml` reads) and their sha256. A file is downloaded to `<file>.part`, resumed
with an HTTP Range request when a `.part` is already there, checked against its sha256, and only
then renamed into place (os.replace, atomic): a file under its final name is always complete and
verified; an interrupted download leaves only the `.part`, which the next run continues.

Sources:
- `veto-paper`: the Veto paper's 1K splits, from its public repository (github jjun-0824/Veto,
  folder `data/`, pinned to commit 0ff04a0d...), hashes of the copies the project was built with;
- `gsm8k`: openai/gsm8k (config main) from the Hugging Face Hub, written as GSM8K JSONL
  (`gsm8k/{train,test}.jsonl`, one `json.dumps(row)` per line) and checked against the same hashes
  as the project's reference copies;
- `dialogsum`: knkarthick/dialogsum's CSV files (one row per reference summary: `id, dialogue,
  summary, topic`; the test split repeats each dialogue once per summary) from the Hub over HTTP,
  resumable like the others, then converted to the task's local layout (`dialogsum/dev.jsonl`,
  `dialogsum/test.jsonl` with summary1..3 per dialogue) and checked against the hashes of the
  project's reference copies. The Hub files carry no published hash, so the *converted* output is
  what is verified; the Hub commit actually served (its `X-Repo-Commit` header) and the source
  files' sha256 are recorded in `dialogsum/SOURCE.json`.

`--base-url` points the HTTP files at a mirror holding the same names (tests use a local server).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.errors import DataError

VETO_REPO_COMMIT = "0ff04a0de21e93bb7e13beaa55d37fd6975dd70e"
VETO_BASE_URL = f"https://raw.githubusercontent.com/jjun-0824/Veto/{VETO_REPO_COMMIT}/data/"
DIALOGSUM_HUB_ID = "knkarthick/dialogsum"
# `main`, not a pinned commit: no commit of that repository is known to this project offline. The
# commit actually served is recorded, and the converted files must match the reference hashes.
DIALOGSUM_REVISION = "main"
DIALOGSUM_BASE_URL = f"https://huggingface.co/datasets/{DIALOGSUM_HUB_ID}/resolve/{DIALOGSUM_REVISION}/"
SOURCE_RECORD = "SOURCE.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FetchFile:
    rel: str  # path inside the data directory
    sha256: str
    remote: str = ""  # file name under the dataset's base URL (HTTP datasets)


@dataclass(frozen=True)
class FetchDataset:
    name: str
    description: str
    kind: str  # "http" | "hub_jsonl" | "hub_csv"
    files: tuple[FetchFile, ...] = ()
    base_url: str = ""
    hub_id: str = ""
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)  # data-dir rel path -> Hub split
    sources: dict[str, str] = field(default_factory=dict)  # data-dir rel path -> source file under base_url (hub_csv)


DATASETS: dict[str, FetchDataset] = {
    "veto-paper": FetchDataset(
        "veto-paper", "the Veto paper's 1K KD splits (GSM8K, DialogSum, WizardCoder) from its public repository",
        "http", base_url=VETO_BASE_URL, files=tuple(FetchFile(f"veto-paper/{n}", h, n) for n, h in (
            ("gsm_1k_train.json", "ed04d8a2702449a4a5dda26cf848faf73d3278e64de0f074f0fd1364ad3388c8"),
            ("gsm_1k_vali.json", "ad5a1b7527b0136de4d64823e04061418844e7293c83b86117b725a7b65aed72"),
            ("summ_1k_train.json", "ed6601b66cf025e3cd9fcd8e8ae0ef463870d16d344b2656148e22183c8ebd18"),
            ("summ_1k_vali.json", "1912524b063a0122ac8e92402c568708246aec36e6506ebcc49562c96e41c011"),
            ("wizardcoder_evol_1k_train.json", "3e699b0536b31ff8cd811af3c2a1c188c45af8544f4da72dd832f0af30ba55f4"),
            ("wizardcoder_evol_1k_vali.json", "19931d7d40ffa8d613c20347b8042e7130dac52e8f16c335f6d356f6f86039bc"),
        ))),
    "gsm8k": FetchDataset(
        "gsm8k", "GSM8K train/test from the Hub (openai/gsm8k, config main) as gsm8k/{train,test}.jsonl",
        "hub_jsonl", hub_id="openai/gsm8k", hub_config="main",
        hub_splits={"gsm8k/train.jsonl": "train", "gsm8k/test.jsonl": "test"},
        files=(FetchFile("gsm8k/train.jsonl", "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
               FetchFile("gsm8k/test.jsonl", "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"))),
    "dialogsum": FetchDataset(
        "dialogsum", "DialogSum validation/test from the Hub (knkarthick/dialogsum CSV files) as "
        "dialogsum/{dev,test}.jsonl", "hub_csv", hub_id=DIALOGSUM_HUB_ID, base_url=DIALOGSUM_BASE_URL,
        sources={"dialogsum/dev.jsonl": "validation.csv", "dialogsum/test.jsonl": "test.csv"},
        files=(FetchFile("dialogsum/dev.jsonl", "436721e0a3571eef7072964f80e042fb151d8c6178db1a688ce8f803bbf0a13f"),
               FetchFile("dialogsum/test.jsonl", "6de36eca7e7b9b10975fd5ea3f47391df172d8b3c15d03d84d763cbaab015fda"))),
}

def dataset_for_path(rel: str) -> str | None:
    """Which fetchable name provides a data-directory file (for preflight's fix hints)."""
    for ds in DATASETS.values():
        if any(f.rel == rel for f in ds.files):
            return ds.name
    return None


def fetch_command(rel: str, data_dir: Path | None) -> str:
    """The command that puts `rel` (a path under the data dir) in place, for error messages."""
    from harness.paths import DATA_DIR_ENV

    name = dataset_for_path(rel)
    target = str(data_dir) if data_dir else "DIR"
    env = "" if data_dir else f" and `export {DATA_DIR_ENV}=DIR`"
    if name:
        return f"`distill-bench data fetch {name} --data-dir {target}`{env}"
    return f"put {rel} under the data directory ({target}){env}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _opener(url: str):
    """A loopback mirror is never reached through an HTTP(S)_PROXY from the environment."""
    host = urllib.parse.urlsplit(url).hostname or ""
    local = host in ("localhost", "::1") or host.startswith("127.")
    return urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if local else []))


def _fetch_part(url: str, part: Path, *, timeout: float) -> tuple[bool, dict[str, str]]:
    """Download `url` into `part`, continuing it with a Range request when it holds bytes already.

    Returns (resumed, response headers). The bytes are not checked here: the caller verifies them.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = _opener(url).open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part already holds every byte: verify it below
            return False, {}
        raise DataError(f"download of {url} failed: HTTP {exc.code}; check the network or pass --base-url to a mirror") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot download {url} ({exc}); check the network or pass --base-url to a mirror") from None
    with resp:
        # 206: the server continued where the .part stops; 200: it sent the whole file again.
        resumed = have > 0 and resp.status == 206
        with open(part, "ab" if resumed else "wb") as fh:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        return resumed, {k.lower(): v for k, v in resp.headers.items()}


def download(url: str, dest: Path, sha256: str, *, timeout: float = 60.0,
             log: Callable[[str], None] = lambda s: None) -> str:
    """Download `url` to `dest`, resuming `dest.part`, verifying sha256; returns "present" | "downloaded" | "resumed"."""
    if dest.is_file() and sha256_file(dest) == sha256:
        return "present"
    part = dest.with_name(dest.name + ".part")
    resumed, _ = _fetch_part(url, part, timeout=timeout)
    got = sha256_file(part)
    if got != sha256:
        part.unlink(missing_ok=True)  # a corrupt .part must not be resumed from
        raise DataError(f"{url}: sha256 {got} does not match the expected {sha256}; the partial file was removed. "
                        "Rerun to download it again; if it persists the source changed (pass --base-url to a good mirror)")
    os.replace(part, dest)
    log(f"{dest}: {'resumed' if resumed else 'downloaded'}, sha256 ok")
    return "resumed" if resumed else "downloaded"


def _hub_rows(hub_id: str, config: str | None, split: str) -> list[dict]:
    """Rows of a Hub dataset split (a separate function so tests can stand in for it)."""
    import datasets

    return list(datasets.load_dataset(hub_id, config, split=split))


def _require_hub(what: str) -> None:
    from harness.hub import require_hub

    require_hub(what, "Fetch on a machine that reaches huggingface.co and copy the data directory here.")


def _write_verified(dest: Path, data: bytes, sha256: str) -> None:
    from harness.io import atomic_write_bytes

    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DataError(f"{dest.name}: the rows from the Hub hash to {got}, not the expected {sha256}; the dataset changed "
                        "upstream. Nothing was written")
    atomic_write_bytes(dest, data)


def fetch(name: str, data_dir: Path, *, base_url: str | None = None,
          log: Callable[[str], None] = print) -> dict[str, str]:
    """Fetch dataset `name` into `data_dir`; returns {data-dir path: outcome}."""
    if name not in DATASETS:
        raise DataError(f"nothing named {name!r} to fetch; known: {', '.join(sorted(DATASETS))}")
    ds = DATASETS[name]
    data_dir = Path(data_dir)
    out: dict[str, str] = {}
    if ds.kind == "http":
        base = (base_url or ds.base_url).rstrip("/") + "/"
        for f in ds.files:
            out[f.rel] = download(base + urllib.parse.quote(f.remote), data_dir / f.rel, f.sha256, log=log)
        return out
    if base_url and ds.kind != "hub_csv":
        raise DataError(f"--base-url applies to files fetched over HTTP (veto-paper, dialogsum); {name} comes "
                        "from the Hub through `datasets`")
    if ds.kind == "hub_jsonl":
        for f in ds.files:
            dest = data_dir / f.rel
            if dest.is_file() and sha256_file(dest) == f.sha256:
                out[f.rel] = "present"
                continue
            _require_hub(f"fetching {name}")
            rows = _hub_rows(ds.hub_id, ds.hub_config, ds.hub_splits[f.rel])
            _write_verified(dest, "".join(json.dumps(r) + "\n" for r in rows).encode(), f.sha256)
            out[f.rel] = "downloaded"
            log(f"{dest}: {len(rows)} rows, sha256 ok")
        return out
    return _fetch_hub_csv(ds, data_dir, base_url=base_url, log=log)


# ----------------------------------------------------------------------------- DialogSum (Hub CSV -> local JSONL)

def _csv_rows(data: bytes, source: str) -> list[dict[str, str]]:
    # newline="": quoted fields keep their own line breaks exactly (dialogues span many lines).
    reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
    missing = {"dialogue", "summary", "topic"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{source}: columns {reader.fieldnames} lack {sorted(missing)}; the Hub layout changed "
                        "(expected id, dialogue, summary, topic). Nothing was written")
    return list(reader)


def dialogsum_dev_jsonl(data: bytes, source: str = "validation.csv") -> bytes:
    """The validation split as the local `dialogsum/dev.jsonl`: one row per dialogue, ids by position."""
    rows = _csv_rows(data, source)
    return "".join(json.dumps({"fname": f"dev_{i}", "dialogue": r["dialogue"], "summary": r["summary"],
                               "topic": r["topic"]}) + "\n" for i, r in enumerate(rows)).encode()


def dialogsum_test_jsonl(data: bytes, source: str = "test.csv") -> bytes:
    """The test split (one row per reference summary, a dialogue's rows adjacent) as `dialogsum/test.jsonl`:
    one row per dialogue with summary1..k / topic1..k, which is how the task scores against every reference."""
    groups: list[list[dict[str, str]]] = []
    for r in _csv_rows(data, source):
        if groups and groups[-1][0]["dialogue"] == r["dialogue"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    lines = []
    for i, group in enumerate(groups):
        row: dict[str, str] = {"fname": f"test_{i}", "dialogue": group[0]["dialogue"]}
        for k, r in enumerate(group, 1):
            row[f"summary{k}"] = r["summary"]
            row[f"topic{k}"] = r["topic"]
        lines.append(json.dumps(row) + "\n")
    return "".join(lines).encode()


_CONVERTERS: dict[str, Callable[[bytes, str], bytes]] = {
    "dialogsum/dev.jsonl": dialogsum_dev_jsonl, "dialogsum/test.jsonl": dialogsum_test_jsonl}


def _fetch_hub_csv(ds: FetchDataset, data_dir: Path, *, base_url: str | None,
                   log: Callable[[str], None]) -> dict[str, str]:
    """Each source file is downloaded (resumable, into `<dir>/.source/`), converted, and the conversion is
    hash-checked before it is written atomically; the source is removed once its output is in place."""
    from harness.io import atomic_write_json, read_json

    base = (base_url or ds.base_url).rstrip("/") + "/"
    out: dict[str, str] = {}
    for f in ds.files:
        dest = data_dir / f.rel
        if dest.is_file() and sha256_file(dest) == f.sha256:
            out[f.rel] = "present"
            continue
        if not base_url:
            _require_hub(f"fetching {ds.name}")
        remote = ds.sources[f.rel]
        url = base + urllib.parse.quote(remote)
        src = dest.parent / ".source" / remote
        meta = src.with_name(src.name + ".json")  # what served the completed source file
        resumed = False
        if not src.is_file():
            part = src.with_name(src.name + ".part")
            resumed, headers = _fetch_part(url, part, timeout=60.0)
            atomic_write_json(meta, {"url": url, "commit": headers.get("x-repo-commit")})
            os.replace(part, src)
        data = src.read_bytes()
        converted = _CONVERTERS[f.rel](data, remote)
        got = hashlib.sha256(converted).hexdigest()
        if got != f.sha256:
            src.unlink(missing_ok=True)  # the next run downloads it afresh instead of reconverting the same bytes
            raise DataError(f"{url}: converted to {f.rel} it hashes to {got}, not the expected {f.sha256}; the source "
                            "changed upstream or the download was damaged. Nothing was written; rerun to download "
                            "again, or pass --base-url to a mirror of the expected files")
        from harness.io import atomic_write_bytes

        atomic_write_bytes(dest, converted)
        record_path = dest.parent / SOURCE_RECORD
        record = read_json(record_path) if record_path.is_file() else {"hub_id": ds.hub_id, "files": {}}
        served = read_json(meta) if meta.is_file() else {}
        record["files"][f.rel] = {"source": served.get("url", url), "commit": served.get("commit"),
                                  "requested_revision": DIALOGSUM_REVISION if not base_url else None,
                                  "source_sha256": hashlib.sha256(data).hexdigest(), "sha256": got}
        atomic_write_json(record_path, record)
        src.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        out[f.rel] = "resumed" if resumed else "downloaded"
        log(f"{dest}: converted from {url} (commit {served.get('commit') or 'not reported'}), sha256 ok")
    return out


def fetch_data_dir(explicit: str | None) -> Path:
    """Where `data fetch` writes: --data-dir, else $DISTILL_BENCH_DATA_DIR; never a guessed default."""
    from harness.paths import DATA_DIR_ENV

    chosen = explicit or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        raise DataError(f"data fetch needs a destination: pass --data-dir DIR (then export {DATA_DIR_ENV}=DIR so runs "
                        "read it)")
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise DataError(f"data directory {path} is not writable: pass --data-dir to a writable directory")
    return path
