"""`train.sharding: fsdp`: config refusals, and 2 CPU processes (gloo, FSDP2) train the 1-process weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import RunConfig, SuiteConfig, TeacherPrepConfig, TrainConfig
from tests.training_helpers import write_gsm8k


def _run_cfg(model_dir: Path, data: Path, **train) -> dict:
    return {
        "teacher": {"name": str(model_dir)}, "student": {"name": str(model_dir)},
        "task": {"name": "gsm8k", "train_source": f"file:{data}", "train_limit": 8},
        "objective": {"name": "sft"},
        # grad_clip below the step's gradient norm, so clipping over DTensor gradients is exercised;
        # micro_batch_size 1: 2 micro-batches per rank, so the no-sync accumulation path runs too.
        "train": {"lr": 1e-2, "epochs": 1, "batch_size": 4, "micro_batch_size": 1, "max_prompt_tokens": 96,
                  "max_response_tokens": 24, "precision": "fp32", "grad_clip": 0.05, **train},
    }


def test_fsdp_refused_for_rollout_objectives_and_lora(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    base = _run_cfg(tmp_path / "m", tmp_path / "d.jsonl", sharding="fsdp")
    RunConfig.model_validate(base)  # sft: accepted
    on_policy = {**base, "objective": {"name": "gkd"}}
    with pytest.raises(ValueError, match=r"train\.sharding: fsdp supports objectives trained on ground-truth"):
        RunConfig.model_validate(on_policy)
    with pytest.raises(ValueError, match=r"LoRA is the one-GPU route"):
        RunConfig.model_validate({**base, "student": {"name": "x", "lora": {"r": 4, "alpha": 8}}})
    with pytest.raises(ValueError, match=r"teacher_prep\.train\.sharding: fsdp is for full fine-tuning"):
        TeacherPrepConfig.model_validate({"lora": {"r": 4, "alpha": 8}, "train": {"sharding": "fsdp"}})
    assert TeacherPrepConfig.model_validate({"train": {"sharding": "fsdp"}}).train.sharding == "fsdp"


def test_fsdp_refused_for_suite_students(tmp_path):
    suite = {"name": "s", "teacher": {"name": "t"}, "student": {"name": "s"}, "tasks": [{"name": "gsm8k"}],
             "objectives": [{"name": "sft"}], "train": {"sharding": "fsdp"}}
    with pytest.raises(ValueError, match=r"train\.sharding: fsdp is not supported for a suite's students"):
        SuiteConfig.model_validate(suite)


def test_fsdp_needs_two_processes():
    from harness.training.sharding import check_sharding
    from objectives.base import build_objective

    with pytest.raises(ValueError, match=r"train\.sharding: fsdp shards over processes but this run has 1"):
        check_sharding("fsdp", build_objective("sft", {}).needs(), 1)
    check_sharding("none", build_objective("gkd", {}).needs(), 1)  # the default never refuses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(launcher: list[str], cfg: Path, out: Path, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [*launcher, "-m", "harness.cli", "train", str(cfg), *overrides, "--output-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.integration
def test_two_process_fsdp_trains_the_one_process_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "gsm.jsonl"
    write_gsm8k(data, 8)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_run_cfg(tiny_model_dir, data)))
    # The 1-process reference trains in this process (same code as `distill-bench train`, one
    # interpreter start less); the sharded run needs its own 2-process group.
    from harness.config import load_run_config
    from harness.pipeline import run_training

    run_training(load_run_config(cfg, []), tmp_path / "p1", progress=False)
    _train([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            f"--master_port={_free_port()}"], cfg, tmp_path / "p2", "train.sharding=fsdp")

    init = load_file(tiny_model_dir / "model.safetensors")
    one, two = (load_file(tmp_path / p / "model" / "model.safetensors") for p in ("p1", "p2"))
    # A normal HF checkpoint with every tensor of the 1-process one (tied head included as saved there).
    assert sorted(one) == sorted(two) and len(one) > 10
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    # Measured: 2 steps at lr 1e-2 move weights by 1.5e-2, the runs differ by 2.9e-7 (gradients summed in
    # another order: 2 ranks x 2 micro-batches vs 4). Tolerance 1e-5: float rounding, ~1000x below the move.
    assert moved > 1e-3, moved
    assert diff < 1e-5, (diff, moved)

    summary = json.loads((tmp_path / "p2" / "train_summary.json").read_text())
    layout = summary["sharding"]
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 2
    # Recorded inside the run by each rank: it held about half the parameters, never all of them.
    assert len(layout["local_params_per_rank"]) == 2
    assert all(0 < n < layout["full_params"] for n in layout["local_params_per_rank"]), layout
    assert sum(layout["local_params_per_rank"]) == layout["full_params"], layout
    assert layout["full_params"] == sum(t.numel() for k, t in init.items() if k != "lm_head.weight")
    # The clipping threshold was below the step's norm, so the clipped path ran in both runs alike.
    rows = {p: [json.loads(r) for r in (tmp_path / p / "telemetry.jsonl").read_text().splitlines()] for p in ("p1", "p2")}
    assert len(rows["p2"]) == 2 and all(r["grad_norm"] > 0.05 for r in rows["p2"]), rows
    for a, b in zip(rows["p1"], rows["p2"]):  # the global norm over DTensor shards is the full gradient's norm
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4) and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_unsharded_default_keeps_older_results_and_prepared_teachers_valid(tmp_path):
    from harness.suite import snapshot_conflicts
    from harness.teachers import prep_key

    assert TrainConfig().sharding is None and TrainConfig(sharding="none").sharding is None
    suite = {"name": "s", "teacher": {"name": "t"}, "student": {"name": "s"}, "tasks": [{"name": "gsm8k"}],
             "objectives": [{"name": "sft"}], "teacher_prep": {}}
    cfg = SuiteConfig.model_validate(suite)
    now = cfg.model_dump(mode="json")
    before = json.loads(json.dumps(now))  # a snapshot written before `train.sharding` existed
    del before["train"]["sharding"], before["teacher_prep"]["train"]["sharding"]
    assert snapshot_conflicts(before, now) == []
    # How a preparation is spread over processes is not what it trains: same cache key either way.
    sharded = cfg.model_copy(update={"teacher_prep": TeacherPrepConfig.model_validate({"train": {"sharding": "fsdp"}})})
    assert prep_key(cfg, cfg.tasks[0], "d", tmp_path) == prep_key(sharded, sharded.tasks[0], "d", tmp_path)


# Runs inside each torchrun worker: an uninterrupted run; the same config stopped after step 3
# (`stop_after_step`: the branch Ctrl-C takes); rank 0 then plants the temp dir of a save killed
# half-way and keeps a copy of the stopped run; the stopped run is rerun. Each run's checkpoint steps
# are recorded. (One launch for the three: each interpreter start costs ~6 s of the test's time.)
_DRIVER = """
import json, os, shutil, sys
from pathlib import Path

import harness.training.loop as L
from harness.config import load_run_config
from harness.pipeline import run_training

saves = []
real = L.save_sharded_checkpoint
def counting(run_dir, model, optimizer, scheduler, state, dist, **kw):
    saves.append(state.step)
    return real(run_dir, model, optimizer, scheduler, state, dist, **kw)
L.save_sharded_checkpoint = counting

cfg, out = load_run_config(sys.argv[1], []), Path(sys.argv[2])
main = os.environ["RANK"] == "0"
for name, run, stop_after in (("reference", "reference", None), ("interrupted", "resumed", 3), ("resumed", "resumed", None)):
    if name == "resumed" and main:
        (out / "resumed" / ".checkpoint-killed" / "dcp").mkdir(parents=True)
        (out / "resumed" / ".checkpoint-killed" / "dcp" / "__0_0.distcp").write_bytes(b"torn")
        shutil.copytree(out / "resumed", out / "resharded")
    saves.clear()
    run_training(cfg, out / run, progress=False, stop_after_step=stop_after)
    if main:
        (out / f"{name}.saves.json").write_text(json.dumps(saves))
"""


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            f"--master_port={_free_port()}"]


def _rows(run_dir: Path) -> list[tuple]:
    rows = [json.loads(r) for r in (run_dir / "telemetry.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in rows]


@pytest.mark.integration
def test_interrupted_sharded_run_resumes_to_the_uninterrupted_run(tiny_model_dir, tmp_path):
    """2 processes, a checkpoint every 2 steps: stopped after step 3 of 5, then rerun with 2
    processes (same losses, same weights) and, with `distill-bench train`, with 3 (resharded: the
    same within float rounding)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint import FileSystemReader

    data = tmp_path / "gsm.jsonl"
    write_gsm8k(data, 15)
    raw = _run_cfg(tiny_model_dir, data, sharding="fsdp", batch_size=6, epochs=2, checkpoint_every=2,
                   checkpoint_every_s=None)
    raw["task"]["train_limit"] = 15  # 30 prompts / 6 = 5 steps; 6 divides by 2 and by 3 processes
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    driver = tmp_path / "drive.py"
    driver.write_text(_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run([*_torchrun(2), str(driver), str(cfg), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref, run, resharded = tmp_path / "reference", tmp_path / "resumed", tmp_path / "resharded"

    # The interval policy as unsharded: every 2 steps (the uninterrupted run's last one is then
    # superseded by the final model and deleted); the stop adds one at step 3 that replaces step 2's;
    # the rerun counts its interval from step 3.
    saves = {n: json.loads((tmp_path / f"{n}.saves.json").read_text()) for n in ("reference", "interrupted", "resumed")}
    assert saves == {"reference": [2, 4], "interrupted": [2, 3], "resumed": [5]}, saves
    for out in (ref, run):  # finished: the final model supersedes the checkpoint; the temp dir was removed
        assert sorted(p.name for p in out.iterdir()) == ["model", "telemetry.jsonl", "train_summary.json"]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["optimizer_steps"] == 5 and summary["resume_events"] == []

    # The stopped run as it was left (copied before the rerun): one checkpoint, no .old, the killed
    # save's temp dir; each rank's shard in its own file, no gathered weights or optimizer state.
    assert sorted(p.name for p in resharded.iterdir()) == [".checkpoint-killed", "checkpoint", "telemetry.jsonl"]
    ckpt = resharded / "checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3
    assert json.loads((ckpt / "sharded.json").read_text())["world_size"] == 2
    assert not (ckpt / "model.pt").exists() and not (ckpt / "optim.pt").exists()
    shards = sorted((ckpt / "dcp").glob("*.distcp"))
    assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"], shards  # DCP: `__<rank>_<n>.distcp`
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert {"rng-0.pt", "rng-1.pt", "scheduler.pt", "dcp/.metadata", *(f"dcp/{p.name}" for p in shards)} <= set(manifest)
    # DCP's index: the rows of every tensor each file holds. Each rank wrote exactly its half of
    # every weight and AdamW moment (the tied LM head once, as the embeddings).
    meta = FileSystemReader(ckpt / "dcp").read_metadata()
    rows_in: dict[str, dict[str, int]] = {}
    for index, where in meta.storage_data.items():
        for chunk in getattr(meta.state_dict_metadata[index.fqn], "chunks", []):  # tensors (not pickled values)
            if tuple(chunk.offsets) == tuple(index.offset) and len(chunk.sizes) >= 1:
                rows_in.setdefault(index.fqn, {})[where.relative_path] = chunk.sizes[0]
    init = load_file(tiny_model_dir / "model.safetensors")
    weights = {f"model.{k}" for k in init if k != "lm_head.weight"}
    moments = {f"optim.state.{k[len('model.'):]}.{m}" for k in weights for m in ("exp_avg", "exp_avg_sq")}
    assert weights | moments <= set(rows_in) and "model.lm_head.weight" not in rows_in, sorted(rows_in)
    for fqn in weights | moments:
        n = meta.state_dict_metadata[fqn].size[0]
        assert rows_in[fqn] == {"__0_0.distcp": n // 2, "__1_0.distcp": n // 2}, (fqn, rows_in[fqn])

    _train(_torchrun(3), cfg, resharded)  # the same command, 3 processes
    summary = json.loads((resharded / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["optimizer_steps"] == 5 and summary["world_size"] == 3
    assert any("resumed with 3 processes from a checkpoint written by 2" in e for e in summary["resume_events"]), summary
    assert sorted(p.name for p in resharded.iterdir()) == [".locks", "model", "telemetry.jsonl", "train_summary.json"]

    a, b, c = (load_file(d / "model" / "model.safetensors") for d in (ref, run, resharded))
    moved = max(float((a[k] - init[k]).abs().max()) for k in a)
    assert moved > 1e-3, moved
    # Same process count: the resumed run computes exactly what the uninterrupted one did.
    assert _rows(run) == _rows(ref)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    # 3 processes: gradients summed in another order (as 1 vs 2 processes in the test above).
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-5, max(float((a[k] - c[k]).abs().max()) for k in a)
    for x, y in zip(_rows(ref), _rows(resharded), strict=True):
        assert x[0] == y[0] and x[1] == pytest.approx(y[1], rel=1e-5) and x[2] == pytest.approx(y[2], rel=1e-4)


def _fake_sharded_checkpoint(path: Path, world: int = 2) -> None:
    """The files of a sharded checkpoint with a manifest over them (contents are not tensors)."""
    from harness.training.checkpoint import file_checksum

    (path / "dcp").mkdir(parents=True)
    files = {"dcp/.metadata": b"m", "dcp/__0_0.distcp": b"zero", "dcp/__1_0.distcp": b"one!", "scheduler.pt": b"s",
             "telemetry.jsonl": b'{"step": 1}\n', **{f"rng-{r}.pt": b"r" for r in range(world)}}
    for rel, data in files.items():
        (path / rel).write_bytes(data)
    (path / "state.json").write_text(json.dumps({"step": 1, "telemetry_rows": 1, "nonfinite_steps": 0,
                                                 "nonfinite_in_row": 0, "counters": {}}))
    (path / "sharded.json").write_text(json.dumps({"format": "torch.distributed.checkpoint", "world_size": world}))
    listed = {rel: {"crc32": file_checksum(path / rel), "bytes": (path / rel).stat().st_size}
              for rel in [*files, "state.json", "sharded.json"]}
    (path / "manifest.json").write_text(json.dumps({"step": 1, "files": listed}))


def test_sharded_checkpoint_damage_is_named(tmp_path):
    from harness.training.sharded_checkpoint import _checksum_problem, find_sharded_checkpoint, inspect_checkpoint

    ckpt = tmp_path / "checkpoint"
    assert inspect_checkpoint(ckpt) is None and find_sharded_checkpoint(tmp_path) is None
    _fake_sharded_checkpoint(ckpt)
    verdict = inspect_checkpoint(ckpt)
    assert verdict["world_size"] == 2 and "dcp/__1_0.distcp" in verdict["files"], verdict
    assert find_sharded_checkpoint(tmp_path) == ckpt
    files = verdict["files"]
    assert _checksum_problem(ckpt, sorted(files), files) is None
    (ckpt / "dcp" / "__1_0.distcp").write_bytes(b"ONE!")  # same size, other bytes: only the checksum sees it
    assert inspect_checkpoint(ckpt) == verdict
    assert _checksum_problem(ckpt, sorted(files), files) == "dcp/__1_0.distcp does not match its crc32 checksum in manifest.json"
    (ckpt / "dcp" / "__1_0.distcp").write_bytes(b"on")
    assert inspect_checkpoint(ckpt) == {"why": "dcp/__1_0.distcp has 2 bytes, manifest says 4"}
    (ckpt / "telemetry.jsonl").write_bytes(b"")
    (ckpt / "dcp" / "__1_0.distcp").write_bytes(b"one!")
    assert "telemetry.jsonl has 0 bytes" in inspect_checkpoint(ckpt)["why"]
    (ckpt / "rng-1.pt").unlink()
    assert find_sharded_checkpoint(tmp_path) is None


def test_each_format_refuses_the_others_checkpoint_before_any_model_load(tmp_path):
    from harness.config import load_run_config
    from harness.errors import ConfigError
    from harness.pipeline import run_training
    from harness.training.checkpoint import load_latest, resume_format_problem

    sharded_dir, plain_dir = tmp_path / "s", tmp_path / "u"
    _fake_sharded_checkpoint(sharded_dir / "checkpoint")
    (plain_dir / "checkpoint").mkdir(parents=True)
    (plain_dir / "checkpoint" / "model.pt").write_bytes(b"x")
    assert resume_format_problem(sharded_dir, sharded=True) is None and resume_format_problem(plain_dir, sharded=False) is None
    assert "rerun with train.sharding=fsdp" in resume_format_problem(sharded_dir, sharded=False)
    assert "rerun with train.sharding=none" in resume_format_problem(plain_dir, sharded=True)
    # The unsharded loader used to discard any checkpoint it could not verify: a sharded one is kept.
    with pytest.raises(ConfigError, match=r"resume checkpoint of a sharded run .* or delete"):
        load_latest(sharded_dir, None, None, None)
    assert (sharded_dir / "checkpoint" / "dcp" / "__0_0.distcp").is_file()
    # `train` refuses before loading a model (this one does not exist: a load would fail differently).
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a\n#### 1"}) + "\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_run_cfg(tmp_path / "no-model", data)))
    with pytest.raises(ConfigError, match=r"train\.sharding=fsdp under torchrun"):
        run_training(load_run_config(cfg, []), sharded_dir, progress=False)
