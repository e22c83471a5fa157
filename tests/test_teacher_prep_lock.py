"""Two processes preparing the same teacher at once: one trains, the other waits on the lock and reuses
the result (harness.teachers._prepare_once, harness.locks.FileLock with wait=True)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

# The child prepares the task's teacher. `_prepare` (the training) is wrapped to leave a marker and,
# for the first process, to hold on until the test lets it go, so the second arrives mid-training.
_CHILD = r"""
import json, os, sys, time
from pathlib import Path
import harness.teachers as teachers
from harness.config import load_suite_config

marker_dir = Path(os.environ["PREP_MARKERS"])
real = teachers._prepare

def traced(*args, **kwargs):
    (marker_dir / f"trained-{os.getpid()}").write_text("")
    release = marker_dir / "release"
    if os.environ.get("PREP_HOLD"):
        deadline = time.time() + 120
        while not release.exists() and time.time() < deadline:
            time.sleep(0.05)
    return real(*args, **kwargs)

teachers._prepare = traced
cfg = load_suite_config(sys.argv[1])
tt = teachers.task_teacher(cfg, cfg.tasks[0], None, progress=False)
print(json.dumps({"pid": os.getpid(), "model": tt.spec.name, "key": tt.provenance["prepared"]["key"]}))
"""


def _suite(tmp_path: Path, model_dir: Path) -> Path:
    suite = {
        "name": "prep-lock", "teacher": {"name": str(model_dir)}, "student": {"derive_from": "teacher", "keep_layers": [0, 3]},
        "tasks": [{"name": "dialogsum", "train_source": "synthetic_dialogues", "eval_source": "synthetic_dialogues",
                   "train_limit": 4, "eval_limit": 2}],
        "objectives": [{"name": "sft"}], "seeds": [0],
        "train": {"epochs": 1, "batch_size": 2, "micro_batch_size": 2, "max_new_tokens": 4},
        # Full sft (no LoRA): the tiny model trains in a blink and peft's import is not paid twice.
        "teacher_prep": {"train": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2,
                                   "max_prompt_tokens": 64, "max_response_tokens": 8}},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_processes_racing_for_one_teacher_train_it_once(tiny_model_dir, tmp_path):
    suite = _suite(tmp_path, tiny_model_dir)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DISTILL_BENCH_CACHE": str(tmp_path / "cache"),
           "PREP_MARKERS": str(markers)}
    env.pop("WORLD_SIZE", None)
    err_b = tmp_path / "b.err"
    first = subprocess.Popen([sys.executable, "-c", _CHILD, str(suite)], env={**env, "PREP_HOLD": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        _wait_for(lambda: (markers / f"trained-{first.pid}").exists() or first.poll() is not None, "the first to train")
        assert first.poll() is None, first.communicate()[1][-3000:]
        with open(err_b, "w") as err:
            second = subprocess.Popen([sys.executable, "-c", _CHILD, str(suite)], env=env, stdout=subprocess.PIPE,
                                      stderr=err, text=True)
            # The second reaches the lock while the first still holds it (it is held inside `_prepare`).
            _wait_for(lambda: "teacher prep: waiting for pid" in err_b.read_text() or second.poll() is not None,
                      "the second to wait on the lock")
            assert second.poll() is None, err_b.read_text()[-3000:]
            assert f"waiting for pid {first.pid} " in err_b.read_text()
            (markers / "release").write_text("")
            out_a, err_a = first.communicate(timeout=300)
            out_b, _ = second.communicate(timeout=300)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert first.returncode == 0, err_a[-3000:]
    assert second.returncode == 0, err_b.read_text()[-3000:]
    a, b = json.loads(out_a.strip().splitlines()[-1]), json.loads(out_b.strip().splitlines()[-1])
    # Exactly one process trained; both got the same prepared teacher, complete on disk.
    assert sorted(p.name for p in markers.glob("trained-*")) == [f"trained-{first.pid}"]
    assert a["model"] == b["model"] and a["key"] == b["key"]
    prepared = list((tmp_path / "cache" / "prepared_teachers").glob("*/provenance.json"))
    assert len(prepared) == 1
    provenance = json.loads(prepared[0].read_text())
    assert provenance["optimizer_steps"] == 1 and provenance["model_dir"] == a["model"]
    assert (Path(a["model"]) / "config.json").is_file()
    # A later preparation (here in-process) finds it through the lock without training or waiting.
    import harness.teachers as teachers
    from harness.config import load_suite_config

    def must_not_train(*args, **kwargs):
        raise AssertionError("a prepared teacher was trained again")

    cfg = load_suite_config(suite)
    old_cache = os.environ.get("DISTILL_BENCH_CACHE")
    os.environ["DISTILL_BENCH_CACHE"] = str(tmp_path / "cache")
    original, teachers._prepare = teachers._prepare, must_not_train
    try:
        again = teachers.task_teacher(cfg, cfg.tasks[0], None, progress=False)
    finally:
        teachers._prepare = original
        if old_cache is None:
            os.environ.pop("DISTILL_BENCH_CACHE")
        else:
            os.environ["DISTILL_BENCH_CACHE"] = old_cache
    assert again.spec.name == a["model"] and again.provenance["prepared"]["key"] == a["key"]
