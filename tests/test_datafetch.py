"""`distill-bench data fetch`: sha256-checked, resumable (HTTP Range) and atomic, against a 127.0.0.1 mirror
serving the shared data directory (never copied into the repository)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import datafetch
from harness.cli import main
from harness.datafetch import DATASETS, download, fetch
from harness.errors import DataError

VETO = DATASETS["veto-paper"]


class _Mirror:
    """Serves files of `root` read-only; honours `Range: bytes=N-` unless `ranges` is False; can corrupt bytes."""

    def __init__(self, root: Path, *, ranges: bool = True, corrupt: bool = False,
                 headers: dict[str, str] | None = None, subdir: str = "veto-paper") -> None:
        self.requests: list[dict] = []
        self.bytes_sent = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = (root / self.path.lstrip("/")).resolve()
                outer.requests.append({"path": self.path, "range": self.headers.get("Range")})
                if not path.is_file() or root.resolve() not in path.parents:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if corrupt:
                    data = data[:-1] + bytes([data[-1] ^ 1])
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if m and ranges:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.bytes_sent += len(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{subdir}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "_Mirror":
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_veto_paper_from_a_mirror_then_nothing_to_redo(shared_data_dir, tmp_path, capsys):
    dest = tmp_path / "data"
    with _Mirror(shared_data_dir) as mirror:
        assert main(["data", "fetch", "veto-paper", "--data-dir", str(dest), "--base-url", mirror.url]) == 0
        assert len(mirror.requests) == len(VETO.files)
        for f in VETO.files:
            assert _sha(dest / f.rel) == f.sha256 == _sha(shared_data_dir / f.rel)
        assert not list(dest.rglob("*.part"))
        # Everything present and verified: no request at all.
        assert fetch("veto-paper", dest, base_url=mirror.url, log=lambda s: None) == {f.rel: "present" for f in VETO.files}
        assert len(mirror.requests) == len(VETO.files)
    assert f"DISTILL_BENCH_DATA_DIR={dest.resolve()}" in capsys.readouterr().out


def test_an_interrupted_download_resumes_with_a_range_request(shared_data_dir, tmp_path):
    f = VETO.files[0]
    full = (shared_data_dir / f.rel).read_bytes()
    dest = tmp_path / f.rel
    dest.parent.mkdir(parents=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(full[: len(full) // 3])  # what an interrupted run leaves
    assert not dest.exists()
    with _Mirror(shared_data_dir) as mirror:
        assert download(mirror.url + f.remote, dest, f.sha256) == "resumed"
        assert mirror.requests[0]["range"] == f"bytes={len(full) // 3}-"
        assert mirror.bytes_sent == len(full) - len(full) // 3
    assert dest.read_bytes() == full and not part.exists()


def test_a_server_without_ranges_restarts_the_file(shared_data_dir, tmp_path):
    f = VETO.files[1]
    dest = tmp_path / f.rel
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(b"stale bytes")
    with _Mirror(shared_data_dir, ranges=False) as mirror:
        assert download(mirror.url + f.remote, dest, f.sha256) == "downloaded"
    assert _sha(dest) == f.sha256


def test_a_wrong_hash_leaves_no_file_under_its_final_name(shared_data_dir, tmp_path):
    f = VETO.files[2]
    dest = tmp_path / f.rel
    with _Mirror(shared_data_dir, corrupt=True) as mirror:
        with pytest.raises(DataError, match="does not match the expected"):
            download(mirror.url + f.remote, dest, f.sha256)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_unknown_names_and_missing_destination_are_refused_before_any_download(tmp_path, monkeypatch, capsys):
    assert main(["data", "fetch", "veto-paper", "gsm9k", "--data-dir", str(tmp_path)]) == 2
    assert "gsm9k" in capsys.readouterr().err and not list(tmp_path.iterdir())
    monkeypatch.delenv("DISTILL_BENCH_DATA_DIR", raising=False)
    assert main(["data", "fetch", "veto-paper"]) == 2
    assert "pass --data-dir DIR" in capsys.readouterr().err


def test_gsm8k_from_the_hub_is_written_in_the_local_layout_and_hash_checked(shared_data_dir, tmp_path, monkeypatch):
    """The Hub rows (stood in for by the shared copy's rows) become gsm8k/*.jsonl byte-identical to the reference."""
    rows = {split: [json.loads(line) for line in (shared_data_dir / f"gsm8k/{split}.jsonl").read_text().splitlines()]
            for split in ("train", "test")}
    monkeypatch.setattr(datafetch, "_require_hub", lambda what: None)
    monkeypatch.setattr(datafetch, "_hub_rows", lambda hub_id, config, split: rows[split])
    out = fetch("gsm8k", tmp_path, log=lambda s: None)
    assert out == {"gsm8k/train.jsonl": "downloaded", "gsm8k/test.jsonl": "downloaded"}
    for split in ("train", "test"):
        assert (tmp_path / f"gsm8k/{split}.jsonl").read_bytes() == (shared_data_dir / f"gsm8k/{split}.jsonl").read_bytes()
    # Rows that changed upstream are refused and nothing is written.
    rows["test"][0] = {**rows["test"][0], "answer": "#### 0"}
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError, match="Nothing was written"):
        fetch("gsm8k", fresh, log=lambda s: None)
    assert not (fresh / "gsm8k/test.jsonl").exists()


def test_hub_fetch_offline_fails_fast_naming_the_alternative(tmp_path, monkeypatch):
    from harness.errors import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="offline mode is set"):
        fetch("gsm8k", tmp_path, log=lambda s: None)


# ----------------------------------------------------------------------------- dialogsum: Hub CSV -> local JSONL

def _hub_layout_csv(rows: list[dict]) -> bytes:
    """knkarthick/dialogsum's layout: columns id, dialogue, summary, topic, one row per reference summary."""
    import csv
    import io

    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=["id", "dialogue", "summary", "topic"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


@pytest.fixture
def dialogsum_hub_mirror(shared_data_dir, tmp_path):
    """A directory in the Hub's layout, built from the reference copies: validation 500 rows, test 1,500 rows."""
    dev = [json.loads(line) for line in (shared_data_dir / "dialogsum/dev.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (shared_data_dir / "dialogsum/test.jsonl").read_text().splitlines()]
    root = tmp_path / "hub"
    (root / "dialogsum").mkdir(parents=True)
    (root / "dialogsum/validation.csv").write_bytes(_hub_layout_csv(
        [{"id": r["fname"], "dialogue": r["dialogue"], "summary": r["summary"], "topic": r["topic"]} for r in dev]))
    (root / "dialogsum/test.csv").write_bytes(_hub_layout_csv(
        [{"id": f"{r['fname']}_{k}", "dialogue": r["dialogue"], "summary": r[f"summary{k}"], "topic": r[f"topic{k}"]}
         for r in test for k in (1, 2, 3)]))
    assert len(test) == 500 and (root / "dialogsum/test.csv").read_bytes().count(b"test_499_3") == 1
    return root


def test_dialogsum_fetch_converts_the_hub_csv_to_the_reference_files_and_records_the_commit(
        shared_data_dir, dialogsum_hub_mirror, tmp_path, capsys):
    dest = tmp_path / "data"
    commit = "0123456789abcdef0123456789abcdef01234567"
    with _Mirror(dialogsum_hub_mirror, headers={"X-Repo-Commit": commit}, subdir="dialogsum") as mirror:
        assert main(["data", "fetch", "dialogsum", "--data-dir", str(dest), "--base-url", mirror.url]) == 0
        assert sorted(r["path"] for r in mirror.requests) == ["/dialogsum/test.csv", "/dialogsum/validation.csv"]
        for rel in ("dialogsum/dev.jsonl", "dialogsum/test.jsonl"):
            assert (dest / rel).read_bytes() == (shared_data_dir / rel).read_bytes()
        record = json.loads((dest / "dialogsum/SOURCE.json").read_text())
        assert {f["commit"] for f in record["files"].values()} == {commit}
        assert record["files"]["dialogsum/test.jsonl"]["source_sha256"] == _sha(dialogsum_hub_mirror / "dialogsum/test.csv")
        assert not (dest / "dialogsum/.source").exists() or not list((dest / "dialogsum/.source").iterdir())
        # Verified files present: nothing is requested again.
        assert fetch("dialogsum", dest, base_url=mirror.url, log=lambda s: None) == {
            "dialogsum/dev.jsonl": "present", "dialogsum/test.jsonl": "present"}
        assert len(mirror.requests) == 2
    # The task reads what was written: 500 test dialogues, each with its three references.
    from harness.data import get_task, load_examples

    examples = load_examples(get_task("dialogsum"), "eval", source="dialogsum_local", data_dir=dest, limit=None, seed=0)
    assert len(examples) == 500 and all(len(ex.references) == 3 for ex in examples)


def test_dialogsum_source_download_resumes_and_a_changed_source_writes_nothing(dialogsum_hub_mirror, tmp_path):
    dest = tmp_path / "data"
    src = dialogsum_hub_mirror / "dialogsum/validation.csv"
    full = src.read_bytes()
    part = dest / "dialogsum/.source/validation.csv.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(full[: len(full) // 2])  # an interrupted source download
    with _Mirror(dialogsum_hub_mirror, subdir="dialogsum") as mirror:
        out = fetch("dialogsum", dest, base_url=mirror.url, log=lambda s: None)
        assert out["dialogsum/dev.jsonl"] == "resumed" and out["dialogsum/test.jsonl"] == "downloaded"
        assert mirror.requests[0] == {"path": "/dialogsum/validation.csv", "range": f"bytes={len(full) // 2}-"}
    # Upstream edits one summary: the conversion no longer matches the reference hash.
    fresh = tmp_path / "fresh"
    src.write_bytes(full.replace(b"breathing", b"breathin", 1))
    with _Mirror(dialogsum_hub_mirror, subdir="dialogsum") as mirror:
        with pytest.raises(DataError, match="Nothing was written"):
            fetch("dialogsum", fresh, base_url=mirror.url, log=lambda s: None)
    assert not (fresh / "dialogsum/dev.jsonl").exists()
    assert not (fresh / "dialogsum/.source/validation.csv").exists()  # a rerun downloads it afresh
