"""Depth pruning: shapes, KV-cache correctness, reload equality, sharded / .bin / sliding-window checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from harness.config import ModelSpec
from harness.errors import ConfigError
from harness.modeling import (
    derive_pruned,
    load_model,
    load_tokenizer,
    make_tiny_tokenizer,
    prune_model,
    resolve_model_dir,
)


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir_factory):
    return tiny_model_dir_factory(layers=6)


def _load(d):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def _ids(tokenizer, text="Q: Tom has 12 apples and eats 5. \n\nA:"):
    return tokenizer(text, return_tensors="pt").input_ids


def _greedy_by_full_forward(model, ids, steps):
    """Reference decoding: recompute the whole sequence each step (no cache)."""
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def _assert_cache_consistent(model, ids, steps=12):
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=steps, do_sample=False, use_cache=True, min_new_tokens=steps)
        uncached = model.generate(ids, max_new_tokens=steps, do_sample=False, use_cache=False, min_new_tokens=steps)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, _greedy_by_full_forward(model, ids, steps))


def test_derive_pruned_shapes_weights_and_reload(teacher_dir, tmp_path):
    keep = [0, 2, 5]
    out = derive_pruned(teacher_dir, keep, tmp_path / "pruned")
    teacher, student = _load(teacher_dir), _load(out)
    assert student.config.num_hidden_layers == 3 and len(student.model.layers) == 3
    for new, old in enumerate(keep):
        assert torch.equal(student.model.layers[new].self_attn.q_proj.weight, teacher.model.layers[old].self_attn.q_proj.weight)
        assert student.model.layers[new].self_attn.layer_idx == new
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # re-tied
    tok = load_tokenizer(out)
    assert tok.chat_template == load_tokenizer(teacher_dir).chat_template
    ids = _ids(tok)
    with torch.no_grad():
        in_memory = prune_model(_load(teacher_dir), keep)(ids).logits
        assert torch.allclose(student(ids).logits, in_memory, atol=1e-5)
        assert torch.equal(_load(out)(ids).logits, student(ids).logits)  # reload: identical
    _assert_cache_consistent(student, ids)


def test_derive_pruned_reuses_and_protects_out_dir(teacher_dir, tmp_path):
    out = derive_pruned(teacher_dir, [1, 3], tmp_path / "p")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert derive_pruned(teacher_dir, [3, 1], tmp_path / "p") == out  # same layers (teacher order): reused
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different build"):
        derive_pruned(teacher_dir, [0, 3], tmp_path / "p")


@pytest.mark.parametrize(
    "keep, message",
    [([0, 6], r"outside the teacher's 6 layers \(valid: 0..5\)"), ([], "empty"), ([1, 1], "repeats"), ([-1], "outside")],
)
def test_invalid_layer_lists(teacher_dir, tmp_path, keep, message):
    with pytest.raises(ConfigError, match=message):
        derive_pruned(teacher_dir, keep, tmp_path / "bad")


def test_spec_drop_layers_uses_cache(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_BENCH_CACHE", str(tmp_path / "cache"))
    teacher = ModelSpec(name=str(teacher_dir))
    student_spec = ModelSpec(derive_from="teacher", drop_layers=[1, 4])
    d = resolve_model_dir(student_spec, teacher)
    assert d.parent == (tmp_path / "cache" / "models").resolve()
    model, tok = load_model(student_spec, teacher=teacher)
    assert model.config.num_hidden_layers == 4
    same = resolve_model_dir(ModelSpec(derive_from="teacher", keep_layers=[0, 2, 3, 5]), teacher)
    assert same == d  # drop and keep forms of one layer set share the cache entry
    with pytest.raises(ConfigError, match="removes all"):
        resolve_model_dir(ModelSpec(derive_from="teacher", drop_layers=list(range(6))), teacher)
    with pytest.raises(ConfigError, match="student.keep_layers"):
        resolve_model_dir(ModelSpec(derive_from="teacher", keep_layers=[7]), teacher)


def test_prune_model_in_memory_fixes_layer_idx(teacher_dir):
    model = prune_model(_load(teacher_dir), [0, 3, 4])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert model.config.num_hidden_layers == 3
    _assert_cache_consistent(model, _ids(load_tokenizer(teacher_dir)))


def test_sharded_checkpoint(teacher_dir, tmp_path):
    sharded = tmp_path / "sharded"
    _load(teacher_dir).save_pretrained(sharded, max_shard_size="20KB")
    load_tokenizer(teacher_dir).save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    out = derive_pruned(sharded, [2, 3], tmp_path / "pruned")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert not any(".layers.4." in k or ".layers.2." in k for k in index["weight_map"])
    assert all((out / f).is_file() for f in set(index["weight_map"].values()))
    ids = _ids(load_tokenizer(out))
    with torch.no_grad():
        expected = prune_model(_load(teacher_dir), [2, 3])(ids).logits
        assert torch.allclose(_load(out)(ids).logits, expected, atol=1e-5)


def test_bin_checkpoint_falls_back_to_model_pruning(teacher_dir, tmp_path):
    legacy = shutil.copytree(teacher_dir, tmp_path / "legacy")
    from safetensors.torch import load_file

    torch.save(load_file(legacy / "model.safetensors"), legacy / "pytorch_model.bin")
    (legacy / "model.safetensors").unlink()
    out = derive_pruned(legacy, [0, 5], tmp_path / "pruned")
    ids = _ids(load_tokenizer(out))
    with torch.no_grad():
        expected = prune_model(_load(teacher_dir), [0, 5])(ids).logits
        assert torch.allclose(_load(out)(ids).logits, expected, atol=1e-5)


def test_sliding_window_layer_types_follow_their_layers(tmp_path):
    """Qwen2-style per-layer attention types must be pruned with their layers (and the cache must agree)."""
    tok = make_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=3,
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    teacher = Qwen2ForCausalLM(config)
    with torch.no_grad():
        teacher.model.embed_tokens.weight.normal_(0, 1)
    teacher.save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    types = teacher.config.layer_types
    assert types[:3] == ["full_attention"] * 3 and types[3:] == ["sliding_attention"] * 3
    keep = [1, 3, 4]
    out = derive_pruned(tmp_path / "qwen", keep, tmp_path / "pruned")
    student = _load(out)
    assert student.config.layer_types == [types[i] for i in keep]
    ids = _ids(tok, "a much longer prompt than the four token window, so sliding matters")
    _assert_cache_consistent(student, ids)
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, prune_model(_load(tmp_path / "qwen"), keep)(ids).logits, atol=1e-5)
