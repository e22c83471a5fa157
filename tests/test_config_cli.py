"""Config validation (refused before any work, with field path and hint) and the CLI surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import load_run_config, load_suite_config
from harness.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

VALID_RUN = {
    "teacher": {"name": "smollm2-135m-instruct"},
    "student": {"derive_from": "teacher", "drop_layers": [10, 11]},
    "task": {"name": "gsm8k"},
    "objective": {"name": "veto", "params": {"beta_start": 0.8}},
}


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_valid_run_config_loads(tmp_path):
    cfg = load_run_config(_write(tmp_path, VALID_RUN))
    assert cfg.objective.name == "veto" and cfg.train.lr == 1e-5


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["train"].update(lrr=1e-5), r"train\.lrr: unknown key"),
        (lambda d: d["train"].update(lr="fast"), r"train\.lr: .*valid number"),
        (lambda d: d["task"].update(name="gsm9k"), r"task\.name: .*unknown task 'gsm9k'.*did you mean 'gsm8k'"),
        (lambda d: d["objective"].update(name="vetoo"), r"objective: .*unknown objective 'vetoo'. Did you mean 'veto'"),
        (lambda d: d["objective"]["params"].update(beta_start=-0.5), r"(?s)objective: .*beta_start: .*greater than or equal to 0.*allowed range"),
        (lambda d: d["task"].update(train_source="file:/nonexistent/x.jsonl"), r"task\.train_source: .*does not exist"),
        (lambda d: d["student"].update(keep_layers=[1]), r"student: .*exactly one of `keep_layers` or `drop_layers`"),
        (lambda d: d["train"].update(batch_size=6, micro_batch_size=4), r"batch_size \(6\) must be a multiple"),
    ],
)
def test_bad_run_configs_are_refused_with_field_path(tmp_path, mutate, expected):
    data = yaml.safe_load(yaml.safe_dump(VALID_RUN))
    data.setdefault("train", {})
    mutate(data)
    with pytest.raises(ConfigError, match=expected):
        load_run_config(_write(tmp_path, data))


def test_overrides_are_validated_like_the_file(tmp_path):
    path = _write(tmp_path, VALID_RUN)
    cfg = load_run_config(path, ["train.lr=3e-5", "objective.params.direction=reverse"])
    assert cfg.train.lr == 3e-5 and cfg.objective.params["direction"] == "reverse"
    with pytest.raises(ConfigError, match=r"train\.lr: .*greater than 0"):
        load_run_config(path, ["train.lr=-1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_run_config(path, ["train.lr"])


def test_missing_config_file_is_clear():
    with pytest.raises(ConfigError, match="not found"):
        load_run_config("/nonexistent/run.yaml")


@pytest.mark.parametrize("suite", ["smoke", "paper"])
def test_embedded_suites_validate(suite):
    cfg = load_suite_config(REPO / "suites" / f"{suite}.yaml")
    names = {o.name for o in cfg.objectives}
    assert {"sft", "supervised_kd", "onpolicy_fkl", "veto"} <= names
    assert {t.name for t in cfg.tasks} == {"gsm8k", "humaneval", "dialogsum"}


def test_suite_cross_checks(tmp_path):
    raw = yaml.safe_load((REPO / "suites" / "smoke.yaml").read_text())
    raw["sweeps"] = [{"objective": "nope", "param": "beta_start", "values": [0.3]}]
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="sweep names objective 'nope'"):
        load_suite_config(p)


def test_cli_help_for_every_verb():
    for verb in ("run", "train", "eval", "report", "objectives", "tasks"):
        proc = subprocess.run([sys.executable, "-m", "harness.cli", verb, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage:" in proc.stdout and len(proc.stdout) > 200, verb
    top = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True, timeout=60)
    for verb in ("run", "train", "eval", "report", "objectives", "tasks"):
        assert verb in top.stdout


def test_cli_lists_objectives(capsys):
    assert main(["objectives"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "supervised_kd", "onpolicy_fkl", "onpolicy_rkl", "veto", "seqkd", "gkd", "skew_kl",
                 "skew_rkl", "tvd", "onpolicy_pg"):
        assert f"\n{name}\n" in "\n" + out, name
    assert "beta_start" in out and "sequence source" in out


def test_cli_user_error_exits_2_without_traceback(tmp_path, capsys):
    bad = dict(VALID_RUN, bogus=1)
    assert main(["train", str(_write(tmp_path, bad))]) == 2
    err = capsys.readouterr().err
    assert "bogus: unknown key" in err and "Traceback" not in err


def test_paper_dry_run_prints_plan_offline(capsys, monkeypatch, tmp_path):
    # Offline, no Hub cache, no key: the plan is printed, then preflight refuses (tests/test_preflight.py).
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["run", "paper", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert "gsm8k__T=Qwen2-7B-Instruct+sft-lora__Veto__s2" in captured.out and "total" in captured.out
    assert "prerequisite(s) missing" in captured.err


def test_dry_run_shard_selects_a_disjoint_subset(capsys):
    main(["run", "smoke", "--dry-run", "--shard", "1/2"])
    a = {l.split()[0] for l in capsys.readouterr().out.splitlines() if "__" in l}
    main(["run", "smoke", "--dry-run", "--shard", "2/2"])
    b = {l.split()[0] for l in capsys.readouterr().out.splitlines() if "__" in l}
    assert a and b and not (a & b)
    assert main(["run", "smoke", "--dry-run", "--shard", "3/2"]) == 2


def test_results_written_before_a_new_setting_resume(tmp_path):
    """A snapshot that predates a setting with a non-empty default (train.checkpoint_every_s) is read
    with that default filled in: resuming at the default is allowed, a different value is refused,
    naming the field and both values."""
    from harness.config import TrainConfig
    from harness.suite import SuiteRunner, plan_cells

    default = TrainConfig.model_fields["checkpoint_every_s"].default
    assert default not in (None, [])  # the case the older rule (drop new *empty* keys) got wrong
    cfg = _smoke_cfg()
    cfg.train.checkpoint_every_s = default
    older = cfg.model_dump(mode="json")
    del older["train"]["checkpoint_every_s"]
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "suite.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    SuiteRunner(cfg, tmp_path).write_snapshot(plan_cells(cfg))  # same results: resumes
    assert yaml.safe_load((tmp_path / "smoke" / "suite.yaml").read_text())["train"]["checkpoint_every_s"] == default

    (tmp_path / "smoke" / "suite.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    changed = _smoke_cfg()
    changed.train.checkpoint_every_s = default / 2
    with pytest.raises(ConfigError, match=rf"`train` changed \(train.checkpoint_every_s: {default} -> {default / 2}\)"):
        SuiteRunner(changed, tmp_path).write_snapshot(plan_cells(changed))


def _smoke_cfg(**changes):
    """The packaged smoke suite with top-level fields replaced."""
    from harness.config import SuiteConfig
    from harness.suite import resolve_suite_path

    raw = yaml.safe_load(resolve_suite_path("smoke").read_text())
    return SuiteConfig.model_validate({**raw, **changes})


def test_results_dir_accepts_a_grown_matrix_but_refuses_changed_settings(tmp_path):
    from harness.suite import SuiteRunner, plan_cells

    base = _smoke_cfg()
    SuiteRunner(base, tmp_path).write_snapshot(plan_cells(base))
    # more seeds, another objective, a new sweep, a changed description: the finished cells stay valid
    grown = _smoke_cfg(seeds=[0, 1], description="now with two seeds",
                       objectives=[*base.model_dump(mode="json")["objectives"], {"name": "gkd"}],
                       sweeps=[{"objective": "veto", "param": "beta_start", "values": [0.3, 1.0]}])
    SuiteRunner(grown, tmp_path).write_snapshot(plan_cells(grown))
    assert (tmp_path / "smoke" / "suite_history" / "suite.0.yaml").is_file()
    assert yaml.safe_load((tmp_path / "smoke" / "suite.yaml").read_text())["seeds"] == [0, 1]
    # a changed learning rate, a changed task limit or changed objective parameters: refused, naming the field
    train = {**grown.model_dump(mode="json")["train"], "lr": 1e-4}
    tasks = grown.model_dump(mode="json")["tasks"]
    tasks[0] = {**tasks[0], "eval_limit": 99}
    objectives = grown.model_dump(mode="json")["objectives"]
    veto = [o for o in objectives if o["name"] == "veto"][0]
    veto["params"] = {**veto["params"], "beta_end": 0.1}
    for bad, needle in ((dict(train=train), "`train` changed"), (dict(tasks=tasks), "tasks entry `gsm8k` changed"),
                        (dict(objectives=objectives), "objectives entry `veto` changed")):
        cfg = _smoke_cfg(**{**grown.model_dump(mode="json"), **bad})
        with pytest.raises(ConfigError, match=needle):
            SuiteRunner(cfg, tmp_path).write_snapshot(plan_cells(cfg))
