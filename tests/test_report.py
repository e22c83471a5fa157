"""Leaderboards rebuilt from a synthetic results dir whose numbers are known by construction."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from harness.report import build_report, leaderboard_frame, load_results
from harness.report.stats import t_quantile
from harness.report.table import build_leaderboard

N_GSM = 20
N_DS = 10

# (objective, seed) -> number of leading GSM8K examples answered correctly (others wrong).
GSM_CORRECT = {
    ("sft", 0): 8, ("sft", 1): 10,
    ("supervised_kd", 0): 9, ("supervised_kd", 1): 11,
    ("veto", 0): 14, ("veto", 1): 12,
    ("teacher", 0): 19, ("student_init", 0): 4,
    ("veto@0.3", 0): 13,
}
# (objective, seed) -> (wins, ties, losses) over N_DS dialogues, in that order.
DS_VERDICTS = {
    ("sft", 0): (4, 2, 4), ("sft", 1): (5, 0, 5),
    ("supervised_kd", 0): (7, 0, 3), ("supervised_kd", 1): (6, 0, 4),
    ("veto", 0): (6, 2, 2), ("veto", 1): (5, 2, 3),
    ("student_init", 0): (3, 0, 7),
    ("veto@0.3", 0): (5, 0, 5),
}


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_cell(
    root: Path, task: str, objective: str, seed: int, *, sweep: dict | None = None, key: str | None = None
) -> Path:
    """One finished cell with aggregate, per-example records, telemetry, cost and diagnostics."""
    key = key or objective
    baseline = objective in ("teacher", "student_init")
    label = {"teacher": "Teacher", "student_init": "Student (init)", "veto": "Veto"}.get(objective, objective)
    sweep_part = "".join(f"__{k}={v}" for k, v in (sweep or {}).items())
    # Layout as harness/suite.py writes it: baseline cells carry no seed suffix.
    cell_id = f"{task}__{label}" if baseline else f"{task}__{label}{sweep_part}__s{seed}"
    cdir = root / "cells" / cell_id
    if task == "gsm8k":
        k = GSM_CORRECT[(key, seed)]
        rows = [
            {"id": f"g{i}", "prompt": f"q{i}", "output": "x", "extracted": str(i if i < k else -1), "target": str(i), "correct": i < k}
            for i in range(N_GSM)
        ]
        metrics = {"accuracy": k / N_GSM, "n": N_GSM}
    else:
        verdicts = DS_VERDICTS.get((key, seed))
        if verdicts is None:  # the teacher is the DialogSum baseline: no win-rate against itself
            seq = [None] * N_DS
        else:
            w, t, loss = verdicts
            seq = ["win"] * w + ["tie"] * t + ["loss"] * loss
        rows = [
            {"id": f"d{i}", "output": "s", "baseline_output": "b", "verdict": v,
             "rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.2 + 0.01 * i + 0.01 * seed}
            for i, v in enumerate(seq)
        ]
        rouge_l = sum(r["rougeL"] for r in rows) / N_DS
        metrics = {"rougeL": rouge_l, "rouge1": 0.3, "rouge2": 0.1, "n": N_DS}
        if verdicts is not None:
            w, t, loss = verdicts
            metrics.update(win_rate=(w + 0.5 * t) / N_DS, wins=w, ties=t, losses=loss, malformed=0, win_rate_se=0.1)
    _write_jsonl(cdir / "eval" / f"{task}.jsonl", rows)
    _write_json(cdir / "eval" / f"{task}.json", {**metrics, "protocol": {"name": "paper", "greedy": True}})
    steps = 0 if baseline else 20
    if not baseline:
        telemetry = []
        for s in range(steps):
            g = 1.0 / (1 + 0.05 * s)
            if objective == "veto" and s == 12 and seed == 0:
                g = 10.0  # one deliberate spike
            row = {"step": s + 1, "loss": 2.0 - 0.05 * s, "grad_norm": g, "lr": 1e-5 * (1 - s / steps), "entropy": 1.0,
                   "teacher_kl": 0.5, "tokens_per_s": 100.0, "source": "student", "loss_tokens": 512, "nonfinite": False}
            if objective == "veto":
                row["beta"] = 0.6 + (0.3 if sweep else 0.0) * s / steps
            telemetry.append(row)
        if objective == "supervised_kd" and seed == 1:
            # As harness/training/telemetry.py writes a non-finite step: NaN -> null, inf -> "inf".
            telemetry[5].update(nonfinite=True, loss=None, grad_norm="inf")
        _write_jsonl(cdir / "telemetry.jsonl", telemetry)
    cell = {
        "schema_version": 1, "cell_id": cell_id, "kind": "baseline" if baseline else "trained",
        "objective": objective, "label": label, "objective_params": {"beta_start": 0.6} if objective == "veto" else {},
        "task": task, "seed": seed, "sweep": sweep or {}, "status": "done",
        "cost": {"prompts_seen": 160, "optimizer_steps": steps, "generated_tokens": 12345 if objective == "veto" else 0,
                 "teacher_forward_tokens": 50000, "student_forward_tokens": 60000, "wall_time_s": 100.0 + seed,
                 "train_wall_time_s": 80.0, "eval_wall_time_s": 20.0 + seed, "peak_memory_bytes": 2 * 1024**3},
        "stability": {"grad_norm_max": 99.0, "grad_norm_spikes": 0, "nonfinite_steps": 0},
        "metrics": {task: metrics, "diagnostics": {"teacher_kl": 0.5 + seed * 0.1, "ref_ce": 2.0, "distinct_1": 0.4,
                                                   "distinct_2": 0.7, "self_bleu": 0.3, "mean_length": 42.0}},
    }
    _write_json(cdir / "cell.json", cell)
    return cdir


def make_results(root: Path, *, with_extras: bool = True) -> Path:
    """3 objectives x 2 tasks x 2 seeds + baselines + a one-seed sweep + incomplete cells."""
    root.mkdir(parents=True, exist_ok=True)
    suite = {
        "name": "smoke",
        "description": "Pipeline check on a tiny model.",
        "teacher": {"name": "tiny-teacher"},
        "student": {"name": "tiny-student"},
        "tasks": [{"name": "gsm8k", "eval_limit": N_GSM}, {"name": "dialogsum", "eval_limit": N_DS}],
        "objectives": [{"name": "sft"}, {"name": "supervised_kd"}, {"name": "veto", "label": "Veto", "params": {"beta_start": 0.6}}],
        "seeds": [0, 1],
        "sweeps": [{"objective": "Veto", "param": "beta_start", "values": [0.3]}],
        "train": {"lr": 1e-5, "max_steps": 20},
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    _write_json(root / "environment.json", {"python": "3.11", "device": "cpu", "packages": {"torch": "2.13.0"}})
    plan = []
    for task in ("gsm8k", "dialogsum"):
        for obj in ("sft", "supervised_kd", "veto"):
            for seed in (0, 1):
                plan.append({"cell_id": write_cell(root, task, obj, seed).name, "task": task, "seed": seed})
        for obj in ("teacher", "student_init"):
            plan.append({"cell_id": write_cell(root, task, obj, 0).name})
        plan.append({"cell_id": write_cell(root, task, "veto", 0, sweep={"beta_start": 0.3}, key="veto@0.3").name})
    if with_extras:
        (root / "cells" / "gsm8k__Veto__s2").mkdir(parents=True)  # started, never finished
        _write_json(root / "cells" / "dialogsum__Veto__s2" / "cell.json", {"cell_id": "dialogsum__Veto__s2", "status": "running"})
        plan += [{"cell_id": "gsm8k__Veto__s2"}, {"cell_id": "dialogsum__Veto__s2"}, {"cell_id": "gsm8k__sft__s2"}]
    _write_json(root / "plan.json", {"schema_version": 1, "cells": plan})
    return root


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("results") / "smoke")


@pytest.fixture(scope="module")
def report(results_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("leaderboards")
    return build_report(results_dir, out)


def _main(frame: pd.DataFrame, row: str, metric: str) -> pd.Series:
    sel = frame[(frame.section == "main") & (frame.row == row) & (frame.metric == metric)]
    assert len(sel) == 1, (row, metric, len(sel))
    return sel.iloc[0]


# ----------------------------------------------------------------------------- loading


def test_load_results_cells_and_missing(results_dir: Path) -> None:
    res = load_results(results_dir)
    assert len(res.cells) == 2 * (6 + 2 + 1)
    assert res.suite_name == "smoke"
    missing = {m.cell_id: m.reason for m in res.missing}
    assert set(missing) == {"gsm8k__Veto__s2", "dialogsum__Veto__s2", "gsm8k__sft__s2"}
    assert "no cell.json" in missing["gsm8k__Veto__s2"]
    assert "running" in missing["dialogsum__Veto__s2"]
    assert "never started" in missing["gsm8k__sft__s2"]


def test_shards_merge(tmp_path: Path, results_dir: Path) -> None:
    a, b = tmp_path / "shard-a", tmp_path / "shard-b"
    for shard in (a, b):
        (shard / "cells").mkdir(parents=True)
        shutil.copy(results_dir / "suite.yaml", shard / "suite.yaml")
    for i, cdir in enumerate(sorted((results_dir / "cells").iterdir())):
        shutil.copytree(cdir, (a if i % 2 else b) / "cells" / cdir.name)
    merged = load_results([a, b])
    single = load_results(results_dir)
    assert [c.cell_id for c in merged.cells] == [c.cell_id for c in single.cells]
    f1, f2 = leaderboard_frame([a, b]), leaderboard_frame(results_dir)
    pd.testing.assert_frame_equal(f1[f1.section == "main"].reset_index(drop=True), f2[f2.section == "main"].reset_index(drop=True))
    # A parent dir holding both shards works too (cells found at any depth).
    assert len(load_results(tmp_path).cells) == len(single.cells)


# ----------------------------------------------------------------------------- numbers


def test_main_table_means_and_t_ci(results_dir: Path) -> None:
    frame = leaderboard_frame(results_dir)
    assert _main(frame, "sft", "accuracy").value == pytest.approx(45.0)
    assert _main(frame, "supervised_kd", "accuracy").value == pytest.approx(50.0)
    veto = _main(frame, "Veto", "accuracy")
    assert veto.value == pytest.approx(65.0)
    half = t_quantile(0.975, 1) * math.sqrt(50.0) / math.sqrt(2)  # values 70, 60: sd = √50 points
    assert veto.ci_method == "t" and veto.n == 2
    assert veto.ci_lo == pytest.approx(65.0 - half, rel=1e-5) and veto.ci_hi == pytest.approx(65.0 + half, rel=1e-5)
    # DialogSum win-rate: veto (0.7 + 0.6) / 2, ROUGE-L mean of per-item values.
    assert _main(frame, "Veto", "win_rate").value == pytest.approx(65.0)
    assert _main(frame, "sft", "rougeL").value == pytest.approx(100 * (0.245 + 0.255) / 2)
    per_seed = frame[(frame.section == "per_seed") & (frame.row == "Veto") & (frame.metric == "accuracy")]
    assert sorted(per_seed.value) == pytest.approx([60.0, 70.0])


def test_single_seed_rows_use_bootstrap(results_dir: Path) -> None:
    frame = leaderboard_frame(results_dir)
    sweep = _main(frame, "Veto (beta_start=0.3)", "accuracy")
    assert sweep.value == pytest.approx(65.0) and sweep.ci_method == "bootstrap" and sweep.n == N_GSM
    assert sweep.ci_lo < 65.0 < sweep.ci_hi and sweep.ci_lo > 35 and sweep.ci_hi < 90
    teacher = _main(frame, "Teacher", "accuracy")
    assert teacher.value == pytest.approx(95.0) and teacher.kind == "baseline"


def test_delta_paired_bootstrap_and_mcnemar(results_dir: Path) -> None:
    frame = leaderboard_frame(results_dir)
    veto = _main(frame, "Veto", "accuracy")
    assert veto.delta_vs_sft == pytest.approx(20.0)
    assert veto.delta_ci_lo > 0 and veto.delta_ci_hi > veto.delta_ci_lo  # paired bootstrap keeps the sign
    # discordant pairs pooled over seeds: s0 ids 8..13 (6), s1 ids 10..11 (2); none the other way.
    assert veto.p_mcnemar == pytest.approx(2 / 2**8)
    assert bool(veto.significant)
    student = _main(frame, "Student (init)", "accuracy")
    assert student.delta_vs_sft < 0 and student.delta_ci_hi < 0  # one-seed baseline pairs with both SFT seeds
    assert _main(frame, "sft", "accuracy").delta_vs_sft != _main(frame, "sft", "accuracy").delta_vs_sft  # NaN: no self-delta
    board = build_leaderboard(load_results(results_dir))
    comp = board.deltas[("Veto", "gsm8k/accuracy")]
    assert (comp.mcnemar_b, comp.mcnemar_c) == (8, 0) and comp.boot.n_pairs == 2 and comp.boot.n_examples == N_GSM


def test_best_marking_ties_and_baselines(results_dir: Path) -> None:
    board = build_leaderboard(load_results(results_dir))
    # Teacher has the highest GSM8K accuracy but baselines are never "best".
    assert ("Veto", "gsm8k/accuracy") in board.best and ("Teacher", "gsm8k/accuracy") not in board.best
    # veto and supervised_kd tie at 65.0 win-rate: both marked.
    assert {lab for lab, key in board.best if key == "dialogsum/win_rate"} == {"Veto", "supervised_kd"}
    assert ("Veto (beta_start=0.3)", "gsm8k/accuracy") in board.best  # the sweep row ties veto at 65.0


def test_cost_stability_diagnostics(results_dir: Path) -> None:
    board = build_leaderboard(load_results(results_dir))
    stab = board.stability[("Veto", "gsm8k")]
    assert stab["grad_norm_spikes"] == pytest.approx(0.5)  # one spike in seed 0, none in seed 1: mean over seeds
    assert stab["grad_norm_max"] == pytest.approx(10.0)  # recomputed from telemetry, not cell.json's 99
    assert board.stability[("Veto", "all")]["grad_norm_spikes"] == pytest.approx(1.0)  # summed over tasks
    assert board.stability[("supervised_kd", "gsm8k")]["nonfinite_steps"] == pytest.approx(0.5)
    cost = board.cost[("Veto", "all")]
    assert cost["generated_tokens"] == pytest.approx(2 * 12345)
    assert cost["wall_time_s"] == pytest.approx(2 * 100.5)
    assert cost["peak_memory_bytes"] == 2 * 1024**3
    diag = board.diagnostics[("Veto", "gsm8k")]["teacher_kl"]
    assert diag.mean == pytest.approx(0.55) and diag.method == "t"


# ----------------------------------------------------------------------------- files


def test_report_files_and_determinism(report, results_dir: Path, tmp_path: Path) -> None:
    assert report.markdown.name == "smoke.md" and report.html.name == "smoke.html" and report.csv.name == "smoke.csv"
    names = sorted(p.name for p in report.plots)
    assert names == ["schedules.png", "sweep_veto_beta_start.png", "training_curves.png", "winrate.png"]
    for p in report.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = build_report(results_dir, report.markdown.parent)  # rebuild over the same files
    other = build_report(results_dir, tmp_path / "b")
    for first, second in zip(report.all(), other.all()):
        assert first.read_bytes() == second.read_bytes(), first.name
    assert again.all() == report.all()


def test_csv_round_trip(report, results_dir: Path) -> None:
    csv = pd.read_csv(report.csv)
    frame = leaderboard_frame(results_dir)
    assert list(csv.columns) == list(frame.columns) and len(csv) == len(frame)
    assert set(csv.section) == {"main", "per_seed", "cost", "stability", "diagnostics"}
    row = csv[(csv.section == "main") & (csv.row == "Veto") & (csv.metric == "accuracy")].iloc[0]
    assert row.value == pytest.approx(65.0) and bool(row.best)


def test_markdown_contents(report) -> None:
    md = report.markdown.read_text(encoding="utf-8")
    assert "Pipeline check, not a benchmark" in md and "not comparable to the paper" in md
    assert "| **65.0 ±" in md  # best marked in bold with a t-interval
    assert "](smoke_files/training_curves.png)" in md
    main, _, rest = md.partition("## Published reference numbers")
    assert rest, "paper block missing"
    assert "39.9" not in main and "39.9" in rest  # the paper's Veto GSM8K number only in the separate block
    assert "Qwen2-7B-Instruct" in rest
    missing = md.partition("## Missing cells")[2]
    assert "| gsm8k__sft__s2 | planned, never started |" in missing


class _TableParser(HTMLParser):
    """Collects tables (header cells + body rows with cell classes) and checks tag balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tables: dict[str, dict] = {}
        self.current: dict | None = None
        self.urls: list[str] = []
        self.errors: list[str] = []
        self._cell: list | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for k in ("src", "href"):
            if a.get(k):
                self.urls.append(a[k])
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "table":
            self.current = self.tables[a.get("id", f"t{len(self.tables)}")] = {"head": [], "rows": []}
        elif tag == "tr" and self.current is not None:
            self.current["rows"].append([])
        elif tag in ("td", "th") and self.current is not None:
            self._cell = [tag, a.get("class") or "", ""]

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with stack {self.stack[-3:]}")
        else:
            self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self.current is not None:
            self.current["rows"][-1].append(tuple(self._cell))
            self._cell = None


def test_html_valid_self_contained(report) -> None:
    text = report.html.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = _TableParser()
    parser.feed(text)
    parser.close()
    assert not parser.errors and not parser.stack
    assert "http://" not in text and "https://" not in text
    assert parser.urls and all(u.startswith("data:image/png;base64,") for u in parser.urls)
    main = parser.tables["main"]
    header, *body = main["rows"]
    assert all(c[0] == "th" for c in header)
    assert [c[2] for c in header][:3] == ["Method", "Seed ids", "GSM8K acc"]
    labels = [r[0][2] for r in body]
    assert labels == ["Student (init)", "sft", "supervised_kd", "Veto", "Veto (beta_start=0.3)", "Teacher"]
    assert all(len(r) == len(header) for r in body)
    veto = dict(zip([c[2] for c in header], body[3]))
    assert "best" in [c[1] for c in body[3]] and veto["GSM8K acc"][2].startswith("65.0 ±")
    assert "best" not in [c[1] for c in body[-1]]  # Teacher never best
    assert "paper-reference" in parser.tables and "main" in parser.tables
    paper_body = parser.tables["paper-reference"]["rows"][1:]
    assert [r[0][2] for r in paper_body] == ["Student SFT", "Supervised KD", "On-policy KD", "Veto", "Teacher"]
    assert [c[2] for c in paper_body[3][1:]] == ["39.9", "29.0", "37.7", "56.5"]
    assert "position: sticky" in text and 'class="banner"' in text
    delta_rows = parser.tables["delta"]["rows"]
    assert any("†" in c[2] for r in delta_rows for c in r)


def test_missing_everything_does_not_crash(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    (root / "cells" / "gsm8k__sft__s0").mkdir(parents=True)
    files = build_report(root, tmp_path / "out")
    md = files.markdown.read_text(encoding="utf-8")
    assert "gsm8k__sft__s0" in md and "No `suite.yaml`" in md
    assert files.markdown.name == "empty.md" and files.plots == []


def test_humaneval_single_seed_pass_at_k(tmp_path: Path) -> None:
    root = tmp_path / "he"
    cdir = root / "cells" / "humaneval__sft__s0"
    rows = [{"id": f"HumanEval/{i}", "completions": [], "passed": [j < c for j in range(10)], "n": 10, "c": c}
            for i, c in enumerate((0, 5, 10))]
    _write_jsonl(cdir / "eval" / "humaneval.jsonl", rows)
    _write_json(cdir / "cell.json", {"schema_version": 1, "cell_id": cdir.name, "kind": "trained", "objective": "sft",
                                     "task": "humaneval", "seed": 0, "sweep": {}, "status": "done",
                                     "metrics": {"humaneval": {"n_problems": 3, "n_samples": 10}}})
    frame = leaderboard_frame(root)
    p1, p10 = _main(frame, "sft", "pass@1"), _main(frame, "sft", "pass@10")
    assert p1.value == pytest.approx(50.0) and p1.ci_method == "bootstrap"  # from per-problem estimates
    assert p10.value == pytest.approx(100 * 2 / 3)


def test_chromium_screenshot(report, tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium: headless render check skipped")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1400,2000", report.html.resolve().as_uri()],
        check=False, capture_output=True, timeout=60,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]  # decoded, so a blank or error page is caught
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    ink = (pixels.mean(axis=2) < 0.6).mean()  # share of dark (text / lines) pixels
    assert 0.005 < ink < 0.5, ink
    assert pixels.std() > 0.05


def test_dialogsum_scores_follow_the_evaluator() -> None:
    from harness.report.metrics import MAIN_METRICS

    spec = next(m for m in MAIN_METRICS if m.key == "dialogsum/win_rate")
    rows = [
        {"id": "a", "verdict": "win"},
        {"id": "b", "verdict": "malformed", "score": None},  # judge failure: excluded, as in win_rate
        {"id": "c", "verdict": "win", "judge": {"score": 0.75}},  # order=both: mean over the two orders
        {"id": "d", "verdict": "tie"},
    ]
    assert spec.per_example(rows) == {"a": 1.0, "c": 0.75, "d": 0.5}


def test_label_recovered_from_cell_id(tmp_path: Path) -> None:
    """Without a `label` in cell.json, a cell_id naming a suite label still gets its own row."""
    root = make_results(tmp_path / "r", with_extras=False)
    for cj in (root / "cells").glob("*/cell.json"):
        data = json.loads(cj.read_text())
        data.pop("label")
        cj.write_text(json.dumps(data))
    labels = {c.row_label for c in load_results(root).cells}
    assert {"Veto", "Veto (beta_start=0.3)", "sft", "Teacher", "Student (init)"} <= labels


def test_caveat_banner_rules() -> None:
    from harness.report.context import is_pipeline_check

    assert is_pipeline_check({"name": "smoke"})
    assert is_pipeline_check({"name": "ci", "pipeline_check": True})
    assert is_pipeline_check({"name": "tiny", "description": "Pipeline check: numbers not comparable to the paper."})
    assert not is_pipeline_check({"name": "paper", "description": "Veto paper setup; unlike the smoke suite, full data."})
    assert not is_pipeline_check(None)


def test_paper_suite_gets_no_smoke_banner(tmp_path: Path) -> None:
    root = make_results(tmp_path / "paper", with_extras=False)
    suite = yaml.safe_load((root / "suite.yaml").read_text())
    suite.update(name="paper", description="Veto paper setup.", teacher={"name": "Qwen/Qwen2-7B-Instruct"},
                 student={"name": "Qwen/Qwen2-0.5B-Instruct"})
    (root / "suite.yaml").write_text(yaml.safe_dump(suite))
    files = build_report(root, tmp_path / "out")
    md = files.markdown.read_text(encoding="utf-8")
    assert files.markdown.name == "paper.md"
    assert "Pipeline check" not in md and "## Read this first" not in md
