"""The objective registry: discovery, lookups with hints, duplicates, params errors, plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import ConfigDict, Field

from harness.errors import ObjectiveError
from objectives import base
from objectives.base import (
    LossChunk,
    Objective,
    ObjectiveParams,
    PluginLoadWarning,
    SequenceSource,
    TeacherSignal,
    build_objective,
    describe_all,
    discover,
    get_objective,
    list_objectives,
    load_plugin_file,
    register_objective,
    schedule_progress,
    unregister_objective,
)
from objectives.conformance import single_threaded

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention."""
    with single_threaded():
        yield

BUILTINS = {
    "sft", "seqkd", "supervised_kd", "onpolicy_fkl", "onpolicy_rkl", "veto",
    "gkd", "skew_kl", "skew_rkl", "tvd", "onpolicy_pg",
}


def _ce(chunk: LossChunk) -> torch.Tensor:
    return -torch.log_softmax(chunk.student_logits, -1).gather(-1, chunk.targets[:, None])[:, 0]


def test_builtins_are_discovered() -> None:
    names = {cls.name for cls in list_objectives()}
    assert BUILTINS <= names
    assert [c.name for c in list_objectives()] == sorted(c.name for c in list_objectives())


def test_unknown_name_lists_known_names_and_hints() -> None:
    with pytest.raises(ObjectiveError) as err:
        get_objective("vetoo")
    msg = str(err.value)
    assert "unknown objective 'vetoo'" in msg
    assert "Did you mean 'veto'?" in msg
    for name in BUILTINS:
        assert name in msg
    with pytest.raises(ObjectiveError, match="Known objectives"):
        get_objective("zzzzzz")


def test_duplicate_names_are_refused_unless_override() -> None:
    class Clash(Objective):
        name = "sft"
        description = "clash"

        def per_token_loss(self, chunk, sched):
            return _ce(chunk)

    original = get_objective("sft")
    with pytest.raises(ObjectiveError, match="already registered by objectives.sft.SFT"):
        register_objective(Clash)
    assert get_objective("sft") is original
    try:
        register_objective(override=True)(Clash)
        assert get_objective("sft") is Clash
    finally:
        register_objective(override=True)(original)
    assert get_objective("sft") is original
    register_objective(original)  # re-registering the same class is a no-op


def test_registration_validates_the_class() -> None:
    class NoName(Objective):
        def per_token_loss(self, chunk, sched):
            return _ce(chunk)

    with pytest.raises(ObjectiveError, match="name"):
        register_objective(NoName)

    class Abstract(Objective):
        name = "test_abstract"

    with pytest.raises(ObjectiveError, match="per_token_loss"):
        register_objective(Abstract)

    class LooseParams(ObjectiveParams):
        model_config = ConfigDict(extra="allow")
        x: float = 1.0

    class Loose(Objective):
        name = "test_loose"
        Params = LooseParams

        def per_token_loss(self, chunk, sched):
            return _ce(chunk)

    with pytest.raises(ObjectiveError, match="unknown keys"):
        register_objective(Loose)

    class RequiredParams(ObjectiveParams):
        x: float

    class NoDefault(Objective):
        name = "test_no_default"
        Params = RequiredParams

        def per_token_loss(self, chunk, sched):
            return _ce(chunk)

    with pytest.raises(ObjectiveError, match="default"):
        register_objective(NoDefault)
    with pytest.raises(ObjectiveError, match="subclass of Objective"):
        register_objective(int)  # type: ignore[arg-type]
    assert "test_abstract" not in {c.name for c in list_objectives()}


def test_bad_params_name_the_field_and_range() -> None:
    with pytest.raises(ObjectiveError) as err:
        build_objective("veto", {"beta_start": 12})
    msg = str(err.value)
    assert "objective 'veto'" in msg and "beta_start" in msg and "[0, 10]" in msg and "12" in msg

    with pytest.raises(ObjectiveError) as err:
        build_objective("veto", {"beta_strat": 0.5})
    msg = str(err.value)
    assert "beta_strat: unknown parameter" in msg and "did you mean 'beta_start'" in msg

    with pytest.raises(ObjectiveError) as err:
        build_objective("veto", {"direction": "sideways"})
    assert "direction" in str(err.value) and "forward|reverse" in str(err.value)

    with pytest.raises(ObjectiveError, match=r"alpha.*\[0, 1\)"):
        build_objective("skew_kl", {"alpha": 1.0})
    with pytest.raises(ObjectiveError, match=r"lmbda.*\[0, 1\]"):
        build_objective("gkd", {"lmbda": -0.1})
    with pytest.raises(ObjectiveError, match="mapping"):
        get_objective("gkd")(["beta", 0.5])  # type: ignore[arg-type]


def test_params_are_validated_and_frozen() -> None:
    veto = build_objective("veto", {"beta_start": 1.5, "direction": "reverse"})
    assert veto.params.beta_start == 1.5 and veto.params.direction == "reverse"
    assert veto.params_dict() == {"direction": "reverse", "beta_start": 1.5, "beta_end": 0.0, "beta_schedule": "linear"}
    with pytest.raises(Exception):
        veto.params.beta_start = 2.0  # type: ignore[misc]
    cls = get_objective("veto")
    assert cls(cls.Params(beta_end=0.3)).params.beta_end == 0.3
    assert "Veto(" in repr(veto)


def test_describe_rows_for_the_cli() -> None:
    rows = {r["name"]: r for r in describe_all()}
    assert BUILTINS <= set(rows)
    veto = rows["veto"]
    assert veto["source"] == "student" and veto["teacher_signal"] == "full_logits"
    params = {p["name"]: p for p in veto["params"]}
    assert params["beta_start"] == {
        "name": "beta_start", "type": "float", "default": 0.8, "range": "[0, 10]", "description": params["beta_start"]["description"],
    }
    assert params["direction"]["type"] == "forward|reverse"
    assert rows["gkd"]["sources"] == ["student", "ground_truth"]
    assert rows["sft"]["params"] == [] and rows["sft"]["teacher_signal"] == "none"
    assert rows["onpolicy_pg"]["teacher_signal"] == "full_logits"
    for row in rows.values():
        assert row["description"], row["name"]


def test_describe_all_survives_a_broken_objective() -> None:
    class Broken(Objective):
        name = "test_broken_describe"
        description = "mix fails"

        def source_mix(self, progress):
            raise RuntimeError("no mix")

        def per_token_loss(self, chunk, sched):
            return _ce(chunk)

    register_objective(Broken)
    try:
        with pytest.warns(PluginLoadWarning, match="test_broken_describe.*no mix"):
            rows = {r["name"]: r for r in describe_all()}
        assert "no mix" in rows["test_broken_describe"]["error"]
        assert BUILTINS <= set(rows)
    finally:
        unregister_objective("test_broken_describe")


def test_schedule_progress() -> None:
    assert schedule_progress(0, 10) == 0.0
    assert schedule_progress(9, 10) == 1.0
    assert schedule_progress(15, 10) == 1.0
    assert schedule_progress(0, 1) == 0.0
    assert schedule_progress(3, 7) == pytest.approx(0.5)


# --- plugins -------------------------------------------------------------------------------------
PLUGIN_SOURCE = textwrap.dedent(
    '''
    import torch
    from pydantic import Field
    from objectives.base import Objective, ObjectiveParams, SequenceSource, TeacherSignal, register_objective

    class P(ObjectiveParams):
        scale: float = Field(1.0, ge=0.0, le=5.0)

    @register_objective
    class ScaledCE(Objective):
        name = "test_scaled_ce"
        description = "scaled cross-entropy (test plugin file)"
        Params = P

        def per_token_loss(self, chunk, sched):
            lp = torch.log_softmax(chunk.student_logits, -1)
            return -self.params.scale * lp.gather(-1, chunk.targets[:, None])[:, 0]
    '''
)


def test_load_plugin_file(tmp_path: Path) -> None:
    path = tmp_path / "scaled_ce.py"
    path.write_text(PLUGIN_SOURCE)
    try:
        added = load_plugin_file(path)
        assert [c.name for c in added] == ["test_scaled_ce"]
        assert load_plugin_file(str(path)) == added  # loading twice is a no-op
        obj = build_objective("test_scaled_ce", {"scale": 2.0})
        assert "test_scaled_ce" in {c.name for c in list_objectives()}
        chunk = LossChunk(torch.zeros(2, 4), None, torch.tensor([0, 1]))
        assert torch.allclose(obj.per_token_loss(chunk, {}), torch.full((2,), 2 * torch.log(torch.tensor(4.0))))
    finally:
        unregister_objective("test_scaled_ce")


def test_load_plugin_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ObjectiveError, match="does not exist"):
        load_plugin_file(tmp_path / "missing.py")
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ObjectiveError, match=r"broken_plugin\.py.*boom"):
        load_plugin_file(broken)
    empty = tmp_path / "empty_plugin.py"
    empty.write_text("x = 1\n")
    with pytest.warns(PluginLoadWarning, match="registered no objective"):
        assert load_plugin_file(empty) == []


def _fake_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info with entry_points.txt) under `root`."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = ["[distill_bench.objectives]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, src in modules.items():
        (root / f"{name}.py").write_text(src)


def test_entry_points_load_modules_and_classes_and_broken_ones_only_warn(tmp_path: Path, monkeypatch) -> None:
    good_class = textwrap.dedent(
        '''
        import torch
        from objectives.base import Objective

        class Unregistered(Objective):
            name = "test_ep_class"
            description = "registered by distill-bench because the entry point names the class"

            def per_token_loss(self, chunk, sched):
                return -torch.log_softmax(chunk.student_logits, -1).gather(-1, chunk.targets[:, None])[:, 0]
        '''
    )
    _fake_distribution(
        tmp_path,
        "test_ep_dist",
        {"good_module": "test_ep_good_module", "good_class": "test_ep_good_class:Unregistered",
         "broken_ep": "test_ep_broken_module"},
        {
            "test_ep_good_module": PLUGIN_SOURCE.replace("test_scaled_ce", "test_ep_module"),
            "test_ep_good_class": good_class,
            "test_ep_broken_module": "raise ImportError('missing dependency xyz')\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.warns(PluginLoadWarning, match=r"broken_ep.*test_ep_dist.*missing dependency xyz"):
            discover(refresh=True)
        names = {c.name for c in list_objectives()}
        assert {"test_ep_module", "test_ep_class"} <= names
        assert BUILTINS <= names
    finally:
        for name in ("test_ep_module", "test_ep_class"):
            unregister_objective(name)
        for mod in ("test_ep_good_module", "test_ep_good_class", "test_ep_broken_module"):
            sys.modules.pop(mod, None)
        base._ENTRY_POINTS_LOADED.clear()
        base._ENTRY_POINTS_FAILED.clear()


def test_objective_instance_api_defaults() -> None:
    class Plain(Objective):
        name = "test_plain"
        description = "plain"
        source = SequenceSource.TEACHER

        def per_token_loss(self, chunk, sched):
            return _ce(chunk)

    obj = Plain()
    assert obj.source_mix(0.3) == {SequenceSource.TEACHER: 1.0}
    assert obj.schedule(0, 10) == {}
    assert obj.required_teacher_signal() is TeacherSignal.NONE
    assert obj.params_dict() == {}
    with pytest.raises(ObjectiveError, match="unknown parameter"):
        Plain({"x": 1})


def test_params_field_helper_accepts_plugin_models() -> None:
    class Q(ObjectiveParams):
        k: int = Field(3, ge=1)

    rows = base.params_summary(Q)
    assert rows == [{"name": "k", "type": "int", "default": 3, "range": "[1, inf)", "description": ""}]
