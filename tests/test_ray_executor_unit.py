"""The Ray executor's pieces that need no cluster: validation before any work, resources,
ordering, storage probe, file packing and the driver's commit, the data-parallel launch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.cell_task import PROBE_NAME, CellTaskSpec, pack_cell_files, storage_is_shared
from harness.cli import main
from harness.config import CellResources, SuiteConfig, load_suite_config
from harness.errors import ConfigError
from harness.cells import CellSpec
from harness.suite import SuiteRunner, longest_first, plan_cells, snapshot_conflicts


def _suite_dict(model: str = "some/model") -> dict:
    return {"name": "u", "teacher": {"name": model}, "student": {"derive_from": "teacher", "keep_layers": [0, 1]},
            "tasks": [{"name": "gsm8k", "train_limit": 8}],
            "objectives": [{"name": "sft"}, {"name": "veto"}], "baselines": ["teacher"],
            "train": {"batch_size": 4, "micro_batch_size": 2}}


def _cfg(**ray) -> SuiteConfig:
    return SuiteConfig.model_validate({**_suite_dict(), "ray": ray})


def test_ray_executor_refused_without_ray_before_any_work(tmp_path, monkeypatch, capsys):
    import harness.ray_executor as rx

    monkeypatch.setattr(rx, "ray_installed", lambda: False)
    rc = main(["run", "smoke", "--results-dir", str(tmp_path / "r"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert rc == 2 and 'pip install -e ".[ray]"' in err and "--executor ray" in err
    assert not (tmp_path / "r").exists()


def test_address_without_ray_executor_is_refused(tmp_path, capsys):
    rc = main(["run", "smoke", "--results-dir", str(tmp_path / "r"), "--address", "auto"])
    assert rc == 2 and "--address 'auto' only applies to --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_ray_section_is_validated(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_suite_dict()))
    with pytest.raises(ConfigError, match="per_objective names objective 'gkd'"):
        load_suite_config(path, ["ray.per_objective={gkd: {num_gpus: 2}}"])
    with pytest.raises(ConfigError, match="num_gpus"):
        load_suite_config(path, ["ray.trained.num_gpus=1.5"])
    with pytest.raises(ConfigError, match="storage"):
        load_suite_config(path, ["ray.storage=nfs"])
    cfg = load_suite_config(path, ["ray.per_objective={veto: {num_gpus: 4}}", "ray.max_retries=5"])
    assert cfg.ray.per_objective["veto"].num_gpus == 4 and cfg.ray.max_retries == 5


def test_ray_settings_never_conflict_with_finished_results():
    old = _cfg().model_dump(mode="json")
    new = _cfg(storage="return", max_retries=7, trained={"num_gpus": 2}).model_dump(mode="json")
    assert snapshot_conflicts(old, new) == []
    old.pop("ray")  # results written before the section existed
    assert snapshot_conflicts(old, new) == []


def test_resources_per_kind_and_objective():
    from harness.ray_executor import cell_resources, task_options, task_processes

    cfg = _cfg(per_objective={"veto": {"num_gpus": 2, "num_cpus": 8, "memory_gb": 64}})
    cells = {c.cell_id: c for c in plan_cells(cfg)}
    res, where = cell_resources(cfg, cells["gsm8k__veto__s0"])
    opts = task_options(res, cluster_gpus=8)
    assert where == "ray.per_objective.veto"
    assert opts == {"num_cpus": 8.0, "num_gpus": 2.0, "memory": 64 * 1024**3} and task_processes(res, opts) == 2
    res, where = cell_resources(cfg, cells["gsm8k__sft__s0"])
    assert where == "ray.trained" and task_options(res, cluster_gpus=8)["num_gpus"] == 1.0  # auto, GPUs present
    assert task_options(res, cluster_gpus=0)["num_gpus"] == 0.0  # auto, CPU cluster
    assert task_processes(res, task_options(res, 0)) == 1
    assert task_processes(CellResources(num_gpus=0, processes=2), {"num_gpus": 0.0}) == 2  # gloo on CPU
    assert cell_resources(cfg, cells["gsm8k__teacher"])[1] == "ray.baseline"


def test_infeasible_request_is_refused_naming_the_field():
    from harness.ray_executor import check_feasible

    nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0, "memory": 64 * 1024**3}}]
    check_feasible({"ray.trained": {"num_cpus": 4.0, "num_gpus": 1.0}}, nodes)
    with pytest.raises(ConfigError, match=r"ray.per_objective.veto: a cell asks for 1 CPUs, 2 GPUs.*largest node"):
        check_feasible({"ray.per_objective.veto": {"num_cpus": 1.0, "num_gpus": 2.0}}, nodes)
    dead = [{"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    with pytest.raises(ConfigError, match="ray.trained"):
        check_feasible({"ray.trained": {"num_cpus": 1.0, "num_gpus": 1.0}}, nodes[:0] + dead)


def test_longest_first_puts_rollouts_first_and_baselines_last():
    cfg = _cfg()
    order = [c.cell_id for c in longest_first(cfg, plan_cells(cfg))]
    assert order == ["gsm8k__veto__s0", "gsm8k__sft__s0", "gsm8k__teacher"]


def test_storage_probe(tmp_path):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / PROBE_NAME).write_text("token-1")
    spec = CellTaskSpec(suite={}, results_root=str(tmp_path), storage="auto", probe_token="token-1",
                        scratch_root=None, scratch_key="k")
    assert storage_is_shared(spec, "u")
    spec.probe_token = "another-run"  # same path on another machine: not the driver's directory
    assert not storage_is_shared(spec, "u")
    spec.storage = "shared"
    with pytest.raises(ConfigError, match="ray.storage=return"):
        storage_is_shared(spec, "u")
    spec.storage, spec.probe_token = "return", "token-1"
    assert not storage_is_shared(spec, "u")


def test_pack_cell_files_leaves_resume_state_and_unkept_models(tmp_path):
    for rel in ("eval/gsm8k.json", "telemetry.jsonl", "attempts.jsonl", "train/telemetry.jsonl",
                "train/checkpoint/model.pt", "train/.checkpoint-tmp1/model.pt", "train/model/model.safetensors",
                "eval/.gsm8k.json.x.tmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    kept = pack_cell_files(tmp_path, keep_models=True)
    assert sorted(kept) == ["attempts.jsonl", "eval/gsm8k.json", "telemetry.jsonl", "train/model/model.safetensors",
                            "train/telemetry.jsonl"]
    assert kept["eval/gsm8k.json"] == b"eval/gsm8k.json"
    assert "train/model/model.safetensors" not in pack_cell_files(tmp_path, keep_models=False)


def test_driver_commit_writes_files_then_one_cell_json(tmp_path):
    from harness.ray_executor import commit_result

    cfg = _cfg()
    runner = SuiteRunner(cfg, tmp_path)
    cell = next(c for c in plan_cells(cfg) if c.kind == "trained")
    record = {"cell_id": cell.cell_id, "status": "done", "metrics": {}}
    commit_result(runner, cell, {"record": record, "files": {"eval/gsm8k.json": b"{}", "train/telemetry.jsonl": b""}})
    cdir = runner.cell_dir(cell)
    assert json.loads((cdir / "cell.json").read_text()) == record and (cdir / "eval" / "gsm8k.json").read_bytes() == b"{}"
    assert runner.is_done(cell)
    for bad in ("../other/cell.json", "cell.json", "/etc/passwd"):
        with pytest.raises(ValueError, match="outside its directory"):
            commit_result(runner, CellSpec("x", "trained", "gsm8k", "sft", "sft"), {"record": record, "files": {bad: b""}})


def test_train_data_parallel_two_cpu_processes(tiny_model_dir, tmp_path):
    """The multi-GPU cell's path, on CPU: two gloo processes through the `train` verb."""
    from harness.config import RunConfig
    from harness.dp_launch import train_data_parallel

    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"{i}+{i}?", "answer": f"#### {2 * i}"}) + "\n" for i in range(8)))
    cfg = RunConfig.model_validate({
        "teacher": {"name": str(tiny_model_dir)}, "student": {"name": str(tiny_model_dir)},
        "task": {"name": "gsm8k", "train_source": f"file:{gsm}"}, "objective": {"name": "sft"},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch_size": 2, "max_response_tokens": 16,
                  "max_prompt_tokens": 48}})
    summary, model_dir = train_data_parallel(cfg, tmp_path / "run", 2, timeout_s=300)
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 2
    assert (model_dir / "config.json").is_file()
