"""Issue 12: faults lose nothing and are never silent.

One test (or a few) per row of the issue's attack table, plus "concurrent runs" and "corrupted
checkpoint" end to end on a tiny suite. Faults are injected in-process (patched writers, edited
files) except where a second live process is the point.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from email.message import Message
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError, DataError, DiskError, LockHeldError, TrainingAborted
from tests.training_helpers import write_gsm8k


# ----------------------------------------------------------------------------- helpers


def _tiny_suite_dict(tmp_path: Path, model_dir: Path, **over) -> dict:
    gsm = tmp_path / "gsm.jsonl"
    write_gsm8k(gsm, 8)
    suite = {
        "name": "tiny", "teacher": {"name": str(model_dir)},
        "student": {"derive_from": "teacher", "keep_layers": [0, 3]},
        "tasks": [{"name": "gsm8k", "train_source": f"file:{gsm}", "eval_source": f"file:{gsm}",
                   "train_limit": 8, "eval_limit": 2}],
        "objectives": [{"name": "sft"}], "seeds": [0], "baselines": [],
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 2, "micro_batch_size": 2, "max_new_tokens": 4,
                  "max_prompt_tokens": 64, "max_response_tokens": 16, "checkpoint_every": 1},
        "eval": {"batch_size": 2, "gsm8k": {"max_new_tokens": 4}, "diagnostics": False},
        "keep_models": False,
    }
    suite.update(over)
    return suite


def _write_suite(tmp_path: Path, suite: dict) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _cli(*argv: str) -> int:
    from harness.cli import main

    return main(list(argv))


def _train_partial(model_dir: Path, run_dir: Path, stop_after: int, total: int = 3, **train_kw):
    from harness.training.loop import train
    from tests.training_helpers import make_setup, run_config

    cfg = run_config(model_dir, "sft", checkpoint_every=1, **train_kw)
    return cfg, train(cfg, run_dir, make_setup(model_dir), max_steps=total, progress=False, stop_after_step=stop_after)


def _resume(model_dir: Path, run_dir: Path, cfg, total: int = 3):
    from harness.training.loop import train
    from tests.training_helpers import make_setup

    return train(cfg, run_dir, make_setup(model_dir), max_steps=total, progress=False)


def _steps(run_dir: Path) -> list[int]:
    from harness.io import read_jsonl

    return [r["step"] for r in read_jsonl(run_dir / "telemetry.jsonl")]


# ----------------------------------------------------------------------------- row 1: two runs, one dir


def test_second_run_on_a_results_dir_is_refused_naming_the_holder(tmp_path):
    from harness.locks import SuiteLocks

    with SuiteLocks(tmp_path / "r", None):
        with pytest.raises(LockHeldError, match=rf"pid {os.getpid()} on .*run.lock"):
            SuiteLocks(tmp_path / "r", None).__enter__()
        with pytest.raises(LockHeldError, match="unsharded run holds the whole directory"):
            SuiteLocks(tmp_path / "r", "1/2").__enter__()
    # released on exit: the next run gets it, and the holder record is cleared
    with SuiteLocks(tmp_path / "r", None):
        pass


def test_shards_share_a_dir_but_not_a_shard_or_a_cell(tmp_path):
    from harness.locks import SuiteLocks

    with SuiteLocks(tmp_path / "r", "1/2") as one, SuiteLocks(tmp_path / "r", "2/2"):
        with pytest.raises(LockHeldError, match="shard 1/2"):
            SuiteLocks(tmp_path / "r", "1/2").__enter__()
        with pytest.raises(LockHeldError, match="shard run"):
            SuiteLocks(tmp_path / "r", None).__enter__()
        with one.cell_lock("gsm8k__sft__s0"):
            with pytest.raises(LockHeldError, match="cell gsm8k__sft__s0"):
                one.cell_lock("gsm8k__sft__s0").acquire()


def test_second_train_into_one_run_dir_exits_2(tiny_model_dir, tmp_path, capsys):
    from harness.locks import FileLock

    cfg = {"teacher": {"name": str(tiny_model_dir)}, "student": {"name": str(tiny_model_dir)},
           "task": {"name": "gsm8k"}, "objective": {"name": "sft"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    with FileLock(out / ".locks" / "train.lock", what=f"run directory {out}"):
        assert _cli("train", str(path), "--output-dir", str(out), "--max-steps", "1") == 2
    assert f"run directory {out} is in use by pid {os.getpid()}" in capsys.readouterr().err


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    from harness.locks import LOCK_DIRNAME, SuiteLocks

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "r" / LOCK_DIRNAME / "run.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": "h", "started": "then", "command": "killed run"}))
    with SuiteLocks(tmp_path / "r", None):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"left by pid {int(dead.stdout)}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- row 2: corrupted checkpoint


def _corrupt(path: Path, n: int = 1024) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = os.urandom(min(n, len(data) - mid))
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_restarts_the_run_and_says_so(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    cfg, _ = _train_partial(tiny_model_dir, run, stop_after=2)
    _corrupt(run / "checkpoint" / "model.pt")
    res = _resume(tiny_model_dir, run, cfg)
    events = res.summary["resume_events"]
    assert res.resumed_from_step == 0 and res.steps == 3
    assert any("model.pt does not match its crc32 checksum" in e for e in events), events
    assert events[-1].startswith("no usable checkpoint left")
    assert _steps(run) == [1, 2, 3]


def test_damaged_checkpoint_falls_back_to_the_previous_good_one(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    cfg, _ = _train_partial(tiny_model_dir, run, stop_after=1)
    shutil.copytree(run / "checkpoint", tmp_path / "step1")
    _train_partial(tiny_model_dir, run, stop_after=2)
    # a crash between save_checkpoint's renames keeps the previous checkpoint as `.old`
    shutil.copytree(tmp_path / "step1", run / "checkpoint.old")
    (run / "checkpoint" / "state.json").write_text("{garbage")
    res = _resume(tiny_model_dir, run, cfg)
    assert res.resumed_from_step == 1 and res.steps == 3
    assert any("state.json" in e for e in res.summary["resume_events"])
    assert "resumed from checkpoint.old at step 1" in res.summary["resume_events"]
    assert _steps(run) == [1, 2, 3]


# ----------------------------------------------------------------------------- row 3: torn telemetry


def test_torn_telemetry_is_restored_from_the_checkpoint(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    cfg, _ = _train_partial(tiny_model_dir, run, stop_after=2)
    tele = run / "telemetry.jsonl"
    tele.write_bytes(tele.read_bytes()[:-40])  # the second row torn mid-line
    res = _resume(tiny_model_dir, run, cfg)
    assert res.resumed_from_step == 2 and res.summary["resume_events"] == []
    assert _steps(run) == [1, 2, 3]


def test_checkpoint_without_telemetry_copy_and_torn_telemetry_restarts(tiny_model_dir, tmp_path):
    """A checkpoint written before telemetry copies existed cannot be reconciled with a torn file."""
    from harness.training.checkpoint import MANIFEST, TELEMETRY_COPY

    run = tmp_path / "run"
    cfg, _ = _train_partial(tiny_model_dir, run, stop_after=2)
    (run / "checkpoint" / TELEMETRY_COPY).unlink()
    (run / "checkpoint" / MANIFEST).unlink()
    tele = run / "telemetry.jsonl"
    tele.write_bytes(tele.read_bytes()[:-40])
    res = _resume(tiny_model_dir, run, cfg)
    assert res.resumed_from_step == 0
    assert any("1 intact rows but the checkpoint counts 2" in e for e in res.summary["resume_events"])
    assert _steps(run) == [1, 2, 3]


# ----------------------------------------------------------------------------- row 4: corrupt state files


def _runner(tmp_path: Path, model_dir: Path):
    from harness.config import validate, SuiteConfig
    from harness.suite import SuiteRunner, plan_cells

    cfg = validate(SuiteConfig, _tiny_suite_dict(tmp_path, model_dir))
    return SuiteRunner(cfg, tmp_path / "results", progress=False), plan_cells(cfg)


@pytest.mark.parametrize("content", [b'{"status": "do', b"\x00\xff garbage", b"[1, 2]"])
def test_garbage_cell_json_means_not_done(tiny_model_dir, tmp_path, capsys, content):
    runner, cells = _runner(tmp_path, tiny_model_dir)
    f = runner.cell_dir(cells[0]) / "cell.json"
    f.parent.mkdir(parents=True)
    f.write_bytes(content)
    assert runner.is_done(cells[0]) is False
    if content != b"[1, 2]":
        assert f"{f} is unreadable" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"name: [unclosed", b"\xff\xfe\x00", b"just a string"])
def test_garbage_suite_snapshot_is_a_named_error(tiny_model_dir, tmp_path, content):
    runner, cells = _runner(tmp_path, tiny_model_dir)
    snap = tmp_path / "results" / "tiny" / "suite.yaml"
    snap.parent.mkdir(parents=True)
    snap.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"{snap} is damaged: .*delete it and rerun"):
        runner.write_snapshot(cells)


def test_garbage_state_json_is_detected_before_resume(tiny_model_dir, tmp_path):
    from harness.training.checkpoint import find_checkpoint, verify_checkpoint

    run = tmp_path / "run"
    _train_partial(tiny_model_dir, run, stop_after=1)
    assert find_checkpoint(run) == run / "checkpoint"
    (run / "checkpoint" / "state.json").write_bytes(b"\x00garbage")
    assert "state.json" in verify_checkpoint(run / "checkpoint")
    assert find_checkpoint(run) is None


# ----------------------------------------------------------------------------- row 5: non-UTF-8 input


def test_non_utf8_config_names_its_path(tmp_path):
    from harness.config import load_suite_config

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"{bad} is not UTF-8 text \(byte 9"):
        load_suite_config(bad)


def test_non_utf8_data_file_names_its_path(tmp_path):
    from harness.data.readers import read_records

    bad = tmp_path / "d.jsonl"
    bad.write_bytes(b'{"q": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{bad} is not UTF-8"):
        read_records(bad)


def test_non_utf8_results_files_are_reported_not_raised(tmp_path):
    from harness.report.load import load_results

    cells = tmp_path / "r" / "cells"
    (cells / "a").mkdir(parents=True)
    (cells / "a" / "cell.json").write_bytes(b'{"status": "d\xffone"}')
    (tmp_path / "r" / "suite.yaml").write_bytes(b"name: \xff\n")
    res = load_results(tmp_path / "r")
    assert [(m.cell_id, m.reason) for m in res.missing] == [("a", "unreadable cell.json")]
    assert any("unreadable suite.yaml" in w for w in res.warnings)


# ----------------------------------------------------------------------------- row 6: disk full / read-only


def test_disk_full_during_checkpoint_names_path_size_and_resume(tiny_model_dir, tmp_path, monkeypatch):
    import harness.training.checkpoint as ck

    run = tmp_path / "run"
    cfg, _ = _train_partial(tiny_model_dir, run, stop_after=1)
    before = (run / "checkpoint" / "manifest.json").read_text()
    real_save = ck.torch.save

    def full_disk(obj, path, *a, **k):
        if Path(path).name == "optim.pt":  # what torch's zip writer raises when the disk fills up
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1234 vs 1100")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(DiskError) as err:
        _resume(tiny_model_dir, run, cfg)
    msg = str(err.value)
    assert "unexpected pos" in msg and "needed about" in msg and "MiB free" in msg
    assert f"resumes from the previous checkpoint in {run / 'checkpoint'}" in msg
    assert (run / "checkpoint" / "manifest.json").read_text() == before, "the previous checkpoint is untouched"
    assert not list(run.glob(".checkpoint-*")), "no orphan temp dir"


def test_enospc_in_an_atomic_write_is_a_disk_error(tmp_path, monkeypatch):
    from harness import io as hio

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hio.os, "fsync", no_space)
    with pytest.raises(DiskError, match=r"writing .*cell.json failed: No space left on device; needed about .*free disk space"):
        hio.atomic_write_json(tmp_path / "cell.json", {"a": 1})
    assert not list(tmp_path.glob(".*.tmp"))


def test_read_only_results_dir_is_refused_before_work(tmp_path, monkeypatch, capsys):
    import harness.locks as locks

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(locks.os, "open", read_only)
    with pytest.raises(DiskError, match=r"lock file .*run.lock \(Read-only file system\).*not writable"):
        locks.SuiteLocks(tmp_path / "r", None).__enter__()


# ----------------------------------------------------------------------------- row 7: orphans


def test_orphans_of_a_killed_checkpoint_save_are_removed(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    cfg, _ = _train_partial(tiny_model_dir, run, stop_after=2)
    (run / ".checkpoint-abc123").mkdir()
    (run / ".checkpoint-abc123" / "model.pt").write_bytes(b"x" * 100)
    (run / ".model-xyz").mkdir()
    (run / ".train_summary.json.q1w2.tmp").write_text("{")
    shutil.copytree(run / "checkpoint", run / "checkpoint.old")  # superseded
    _resume(tiny_model_dir, run, cfg)
    left = sorted(p.name for p in run.iterdir() if p.name.startswith(".") or p.name.startswith("checkpoint"))
    # The orphans go on resume; the run then finishes, and a finished run keeps no checkpoint at all
    # (the checkpoint policy: the final model is weights only).
    assert left == [], left
    assert (run / "train_summary.json").is_file()


def test_finished_cells_lose_leftovers_but_keep_results(tiny_model_dir, tmp_path):
    runner, cells = _runner(tmp_path, tiny_model_dir)
    cdir = runner.cell_dir(cells[0])
    (cdir / "eval").mkdir(parents=True)
    (cdir / "cell.json").write_text(json.dumps({"status": "done"}))
    (cdir / "eval" / "gsm8k.jsonl").write_text('{"id": 1}\n')
    for junk in ("train/checkpoint", "train/checkpoint.old", "train/.checkpoint-x1"):
        (cdir / junk).mkdir(parents=True)
        (cdir / junk / "model.pt").write_bytes(b"x" * 1000)
    (cdir / "eval" / ".gsm8k.json.abc.tmp").write_text("{")
    kept = {p: p.read_bytes() for p in (cdir / "cell.json", cdir / "eval" / "gsm8k.jsonl")}
    runner.run(cells)  # every cell done: nothing trains, leftovers go
    assert not (cdir / "train" / "checkpoint").exists() and not (cdir / "train" / "checkpoint.old").exists()
    assert not list(cdir.rglob(".checkpoint-*")) and not list(cdir.rglob("*.tmp"))
    assert {p: p.read_bytes() for p in kept} == kept


# ----------------------------------------------------------------------------- row 8: torn lines in reports


def test_report_names_torn_and_malformed_lines(tmp_path):
    from harness.report import build_report
    from harness.report.load import load_results

    cdir = tmp_path / "r" / "cells" / "gsm8k__sft__s0"
    (cdir / "eval").mkdir(parents=True)
    (cdir / "cell.json").write_text(json.dumps({
        "schema_version": 1, "cell_id": "gsm8k__sft__s0", "kind": "trained", "objective": "sft", "task": "gsm8k",
        "seed": 0, "status": "done", "metrics": {"gsm8k": {"accuracy": 0.5, "n": 4}}}))
    rows = [json.dumps({"id": str(i), "correct": i % 2 == 0}) for i in range(4)]
    (cdir / "eval" / "gsm8k.jsonl").write_text("\n".join(rows[:2] + ["{not json", rows[2], rows[3][:7]]))
    (cdir / "telemetry.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "grad_norm": 1.0}) + "\n{\"step\": 2")
    res = load_results(tmp_path / "r")
    cell = res.cells[0]
    assert len(cell.records("gsm8k")) == 3 and len(cell.telemetry) == 1
    text = "\n".join(cell.problems)
    assert "eval/gsm8k.jsonl:3: malformed JSON" in text
    assert "eval/gsm8k.jsonl:5: torn last line" in text
    assert "telemetry.jsonl:2: torn last line" in text
    build_report(tmp_path / "r", tmp_path / "boards", name="t")
    md = (tmp_path / "boards" / "t.md").read_text()
    assert "gsm8k__sft__s0: eval/gsm8k.jsonl:5: torn last line" in md


# ----------------------------------------------------------------------------- row 9: no gold answer


def test_records_without_gold_answer_are_excluded_and_counted(tmp_path):
    from harness.config import EvalConfig, TaskConfig
    from harness.data import get_task
    from harness.generation import GenerationOutput, GenerationParams
    from harness.report.metrics import LEGACY_DECLARATIONS, spec_from_declaration
    from harness.tasks import gsm8k as scorer
    from harness.tasks.contract import ScoreContext
    from tests.training_helpers import SimpleExample

    exs = [SimpleExample("a", "q", answer="4"), SimpleExample("b", "q", answer=None), SimpleExample("c", "q", answer="5")]
    outs = [GenerationOutput("p", "#### 4", [1], [1], "stop") for _ in exs]
    ctx = ScoreContext(task=get_task("gsm8k"), task_cfg=TaskConfig(name="gsm8k"), eval_cfg=EvalConfig(), examples=exs,
                       prompts=["p"] * 3, outputs=outs, params=GenerationParams(), model=None, tokenizer=None,
                       data_dir=tmp_path)
    agg, rows = scorer.score(ctx)
    assert agg["n"] == 2 and agg["accuracy"] == 0.5
    assert agg["protocol"]["excluded_no_gold_answer"] == 1
    assert [r["correct"] for r in rows] == [True, None, False]
    correct = spec_from_declaration("gsm8k", LEGACY_DECLARATIONS["gsm8k"][0]).per_example
    assert correct(rows) == {"a": 1.0, "c": 0.0}


# ----------------------------------------------------------------------------- rows 10-13: config hardening


def _suite_raw(tmp_path, tiny_model_dir, **over):
    return _tiny_suite_dict(tmp_path, tiny_model_dir, **over)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_lr_is_refused(tmp_path, tiny_model_dir, value):
    from harness.config import load_suite_config

    path = _write_suite(tmp_path, _suite_raw(tmp_path, tiny_model_dir))
    with pytest.raises(ConfigError, match=r"train\.lr: .*finite"):
        load_suite_config(path, [f"train.lr={value}"])


@pytest.mark.parametrize("field, value", [("name", ".."), ("name", "."), ("name", ".hidden"),
                                          ("objectives", [{"name": "sft", "label": "../escape"}]),
                                          ("objectives", [{"name": "sft", "label": "a/b"}])])
def test_names_must_be_plain_path_components(tmp_path, tiny_model_dir, field, value):
    from harness.config import load_suite_config

    path = _write_suite(tmp_path, _suite_raw(tmp_path, tiny_model_dir, **{field: value}))
    with pytest.raises(ConfigError, match="must be a plain directory name"):
        load_suite_config(path)


def test_sweep_values_cannot_escape_the_cell_directory(tmp_path, tiny_model_dir):
    from harness.config import load_suite_config

    raw = _suite_raw(tmp_path, tiny_model_dir, sweeps=[{"objective": "sft", "param": "x", "values": ["../../up"]}])
    with pytest.raises(ConfigError, match="cell directory name"):
        load_suite_config(_write_suite(tmp_path, raw))


def test_file_source_must_be_a_readable_file(tmp_path, tiny_model_dir):
    from harness.config import load_suite_config

    raw = _suite_raw(tmp_path, tiny_model_dir)
    raw["tasks"][0]["train_source"] = f"file:{tmp_path}"
    with pytest.raises(ConfigError, match=r"tasks\.0\.train_source: .*not a regular file"):
        load_suite_config(_write_suite(tmp_path, raw))


def test_duplicate_seeds_are_refused(tmp_path, tiny_model_dir):
    from harness.config import load_suite_config

    with pytest.raises(ConfigError, match=r"seeds: .*repeat \[1\]"):
        load_suite_config(_write_suite(tmp_path, _suite_raw(tmp_path, tiny_model_dir, seeds=[0, 1, 1])))


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    from harness.config import load_suite_config

    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("name: *a9")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100000 nodes"):
        load_suite_config(bomb)
    assert time.perf_counter() - t0 < 5
    # modest anchors stay allowed
    from harness.config import safe_load_yaml

    assert safe_load_yaml("x: &x {lr: 1}\ny: *x\n") == {"x": {"lr": 1}, "y": {"lr": 1}}


# ----------------------------------------------------------------------------- row 14: --max-steps


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_train_max_steps_must_be_positive(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        _cli("train", str(tmp_path / "x.yaml"), "--max-steps", value)
    assert exc.value.code == 2
    assert "--max-steps" in capsys.readouterr().err


# ----------------------------------------------------------------------------- row 15: Retry-After


@pytest.mark.parametrize("header", ["-1", "nan", "inf", "soon"])
def test_judge_retry_after_is_sanitized(header):
    import urllib.error

    from harness.evaluation.judges import OpenAICompatibleJudge, _retry_after

    assert _retry_after(header) is None
    assert _retry_after("3") == 3.0 and _retry_after("1e9") == 120.0
    delays: list[float] = []
    judge = OpenAICompatibleJudge("http://127.0.0.1:9", "m", timeout=1, max_retries=2, backoff=0.5, sleep=delays.append)
    calls = {"n": 0}

    class Reply(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake_open(req, timeout):
        calls["n"] += 1
        if calls["n"] == 1:
            hdrs = Message()
            hdrs["Retry-After"] = header
            raise urllib.error.HTTPError(req.full_url, 429, "Too Many Requests", hdrs, io.BytesIO(b"slow down"))
        return Reply(json.dumps({"choices": [{"message": {"content": "A"}}]}).encode())

    judge._opener.open = fake_open
    assert judge.judge("d", "a", "b") == "A"  # the retried request's answer, not an escaped ValueError
    assert calls["n"] == 2 and len(delays) == 1
    assert math.isfinite(delays[0]) and 0.5 <= delays[0] <= 0.55  # our own backoff, not the header's value


# ----------------------------------------------------------------------------- failed, not done


def test_aborted_cell_is_recorded_failed_and_the_rest_continue(tiny_model_dir, tmp_path, monkeypatch):
    from harness.suite import SuiteRunner

    raw = _tiny_suite_dict(tmp_path, tiny_model_dir, seeds=[0, 1])
    from harness.config import SuiteConfig, validate
    from harness.suite import plan_cells

    cfg = validate(SuiteConfig, raw)
    runner = SuiteRunner(cfg, tmp_path / "results", progress=False)
    cells = plan_cells(cfg)
    ran = []

    def fake_run_cell(cell):
        ran.append(cell.cell_id)
        if cell.seed == 0:
            raise TrainingAborted("5 non-finite steps in a row")
        (runner.cell_dir(cell)).mkdir(parents=True, exist_ok=True)
        (runner.cell_dir(cell) / "cell.json").write_text(json.dumps({"status": "done"}))

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    failed = runner.run(cells)
    assert list(failed) == [cells[0].cell_id] and "non-finite" in failed[cells[0].cell_id]
    assert ran == [c.cell_id for c in cells]
    rec = json.loads((runner.cell_dir(cells[0]) / "cell.json").read_text())
    assert rec["status"] == "failed" and "non-finite" in rec["error"]
    assert not runner.is_done(cells[0]) and runner.is_done(cells[1])


# ----------------------------------------------------------------------------- end to end on a tiny suite


@pytest.mark.integration
def test_concurrent_runs_one_writer_end_to_end(tiny_model_dir, tmp_path, capsys):
    suite = _write_suite(tmp_path, _tiny_suite_dict(tmp_path, tiny_model_dir))
    results, boards = tmp_path / "results", tmp_path / "boards"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(suite), "--results-dir", str(results),
                              "--leaderboards-dir", str(boards), "--no-progress"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = results / "tiny" / ".locks" / "run.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and f'"pid": {first.pid}' in lock.read_text()):
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.02)
    t0 = time.perf_counter()
    rc = _cli("run", str(suite), "--results-dir", str(results), "--leaderboards-dir", str(boards), "--no-progress")
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - t0 < 30
    assert f"in use by pid {first.pid}" in err, err
    out, ferr = first.communicate(timeout=600)
    assert first.returncode == 0, ferr[-3000:]
    cell = json.loads((results / "tiny" / "cells" / "gsm8k__sft__s0" / "cell.json").read_text())
    assert cell["status"] == "done"
    assert cell["stability"]["steps"] == cell["cost"]["optimizer_steps"] == 4  # one writer's rows only
    assert lock.read_text() == "", "the finished holder leaves no stale record"


@pytest.mark.integration
def test_corrupted_checkpoint_end_to_end(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import harness.pipeline as runner_mod

    suite = _write_suite(tmp_path, _tiny_suite_dict(tmp_path, tiny_model_dir))
    results, boards = tmp_path / "results", tmp_path / "boards"
    args = ("run", str(suite), "--results-dir", str(results), "--leaderboards-dir", str(boards), "--no-progress")
    real = runner_mod.run_training

    def interrupted(*a, **k):  # as a Ctrl-C after step 2 would: checkpoint written, then stop
        real(*a, **{**k, "stop_after_step": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod, "run_training", interrupted)
    assert _cli(*args) == 130
    ckpt = results / "tiny" / "cells" / "gsm8k__sft__s0" / "train" / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    _corrupt(ckpt / "model.pt")
    monkeypatch.setattr(runner_mod, "run_training", real)
    assert _cli(*args) == 0
    assert "model.pt does not match its crc32 checksum" in capsys.readouterr().err
    cell = json.loads((ckpt.parent.parent / "cell.json").read_text())
    assert cell["status"] == "done"
    assert any("damaged" in e for e in cell["train_events"]) and "restarts from step 0" in cell["train_events"][-1]
    assert cell["stability"]["steps"] == cell["cost"]["optimizer_steps"] == 4
    assert not ckpt.exists() and not list(ckpt.parent.glob(".checkpoint-*"))
    assert (boards / "tiny.md").is_file()
