"""One cell identity for the suite and the report: ids keep their storage format, and a finished
cell read back from its cell.json is the spec the suite planned."""

from __future__ import annotations

from dataclasses import fields

from harness.cells import CellSpec, baseline_cell, trained_cell
from harness.report.load import Cell


def test_cell_ids_keep_the_results_layout_format():
    # results/README.md, "Cell ids": results directories are keyed by these strings
    assert trained_cell("gsm8k", "veto", "Veto", {"beta_end": 0.1}, {"beta_start": 0.3}, 0).cell_id \
        == "gsm8k__Veto__beta_start=0.3__s0"
    assert baseline_cell("gsm8k", "teacher").cell_id == "gsm8k__teacher"
    tagged = trained_cell("dialogsum", "sft", "sft", {}, {}, 2, teacher_tag="Qwen2-7B-Instruct+sft-lora")
    assert tagged.cell_id == "dialogsum__T=Qwen2-7B-Instruct+sft-lora__sft__s2"
    assert baseline_cell("gsm8k", "student_init", "t").as_dict()["label"] == "Student (init)"
    assert "teacher" not in baseline_cell("gsm8k", "teacher").as_dict()  # plan.json of one-teacher suites unchanged


def test_a_loaded_cell_is_the_planned_spec(tmp_path):
    planned = trained_cell("gsm8k", "veto", "Veto", {"beta_end": 0.1}, {"beta_start": 0.3}, 1)
    record = {"schema_version": 1, **planned.record(), "status": "done"}
    loaded = Cell.loaded(planned.cell_id, tmp_path, record, label=record["label"])
    assert isinstance(loaded, CellSpec)
    assert {f.name: getattr(loaded, f.name) for f in fields(CellSpec)} == planned.as_dict() | {"teacher": ""}
    assert loaded.row_label == "Veto (beta_start=0.3)"


def test_a_cell_json_of_an_older_version_reads_with_implied_values(tmp_path):
    # no kind, no seed: a trained cell whose seed is the id's suffix
    old = Cell.loaded("gsm8k__sft__s3", tmp_path, {"objective": "sft", "task": "gsm8k", "status": "done"})
    assert (old.kind, old.seed, old.label, old.params, old.sweep) == ("trained", 3, "", {}, {})
    assert old.base_label == "sft" and not old.is_baseline
