"""A tiny suite end to end: plan, train, evaluate, report; killed mid-way and resumed to the same leaderboard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from harness.report import build_report, leaderboard_frame
from tests.training_helpers import write_gsm8k

# Columns that legitimately differ between two runs of the same suite (clocks, memory).
VOLATILE = ("time", "wall", "memory", "peak")


def _tiny_suite(tmp_path: Path, model_dir: Path) -> Path:
    gsm = tmp_path / "gsm.jsonl"
    write_gsm8k(gsm, 12)
    suite = {
        "name": "tiny", "description": "tiny random models; pipeline test",
        "teacher": {"name": str(model_dir)},
        "student": {"derive_from": "teacher", "keep_layers": [0, 3]},
        "tasks": [
            {"name": "gsm8k", "train_source": f"file:{gsm}", "eval_source": f"file:{gsm}", "train_limit": 8, "eval_limit": 4},
            {"name": "dialogsum", "train_source": "synthetic_dialogues", "eval_source": "synthetic_dialogues",
             "train_limit": 8, "eval_limit": 4},
        ],
        "objectives": [{"name": "sft"}, {"name": "supervised_kd"}, {"name": "veto", "params": {"beta_start": 0.5}}],
        "seeds": [0],
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch_size": 2, "max_new_tokens": 6,
                  "max_prompt_tokens": 96, "max_response_tokens": 24, "checkpoint_every": 1, "temperature": 1.0, "top_p": 1.0},
        "eval": {"batch_size": 4, "gsm8k": {"max_new_tokens": 8}, "dialogsum": {"max_new_tokens": 8, "baseline": "teacher"},
                 "diagnostics_limit": 2},
        "baselines": ["teacher", "student_init"],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _run(suite: Path, results: Path, boards: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--results-dir", str(results),
           "--leaderboards-dir", str(boards), "--no-progress", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stable_table(results_dir: Path):
    """The long-format leaderboard without rows whose metric is a clock or a memory reading."""
    frame = leaderboard_frame(results_dir)
    stable = ~frame["metric"].str.lower().str.contains("|".join(VOLATILE))
    return frame[stable].reset_index(drop=True)


class _TableCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables = self.rows = 0
        self.external = []

    def handle_starttag(self, tag, attrs):
        self.tables += tag == "table"
        self.rows += tag == "tr"
        for k, v in attrs:
            if k in ("src", "href") and v and v.startswith(("http:", "https:", "//")):
                self.external.append(v)


@pytest.mark.integration
def test_tiny_suite_runs_resumes_and_reports(tiny_model_dir, tmp_path):
    suite = _tiny_suite(tmp_path, tiny_model_dir)

    # Uninterrupted reference run.
    ref = _run(suite, tmp_path / "ref_results", tmp_path / "ref_boards")
    out, err = ref.communicate(timeout=900)
    assert ref.returncode == 0, err[-4000:]
    ref_dir = tmp_path / "ref_results" / "tiny"
    cells = sorted(p.parent.name for p in ref_dir.glob("cells/*/cell.json"))
    assert len(cells) == 2 * 2 + 2 * 3, cells

    # Killed once some cells are done and another is mid-training, then rerun.
    run = _run(suite, tmp_path / "results", tmp_path / "boards")
    deadline = time.time() + 600
    while time.time() < deadline:
        done = list((tmp_path / "results" / "tiny").glob("cells/*/cell.json"))
        training = list((tmp_path / "results" / "tiny").glob("cells/*/train/checkpoint/state.json"))
        if len(done) >= 5 and training:
            break
        assert run.poll() is None, run.stderr.read()[-4000:]
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "results" / "tiny").glob("cells/*/cell.json")}
    rerun = _run(suite, tmp_path / "results", tmp_path / "boards")
    out2, err2 = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err2[-4000:]
    assert f"{len(finished_before)} finished cells skipped" in out2 + err2
    for name, mtime in finished_before.items():
        assert (tmp_path / "results" / "tiny" / "cells" / name / "cell.json").stat().st_mtime_ns == mtime, "never redone"

    # Same leaderboard numbers as the uninterrupted run.
    a, b = _stable_table(ref_dir), _stable_table(tmp_path / "results" / "tiny")
    assert a.equals(b), f"{a}\n!=\n{b}"

    # `report` rebuilds the same files from results alone.
    boards = tmp_path / "boards"
    md_before = (boards / "tiny.md").read_text()
    html_before = (boards / "tiny.html").read_text()
    build_report(tmp_path / "results" / "tiny", boards, name="tiny")
    assert (boards / "tiny.md").read_text() == md_before
    assert (boards / "tiny.html").read_text() == html_before
    assert (boards / "tiny.csv").exists()

    parser = _TableCounter()
    parser.feed(html_before)
    assert parser.tables >= 2 and parser.rows >= 6 and not parser.external
    for label in ("sft", "supervised_kd", "veto", "Teacher"):
        assert label in md_before
