"""The real SmolLM2-135M-Instruct GGUF: one-time conversion, cached reload, pruning. Slow (tens of seconds)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from harness.config import ModelSpec
from harness.data import render_chat_prompt
from harness.modeling import derive_pruned, load_model, load_tokenizer
from harness.modeling.loading import SMOLLM2_PACKAGE_FILE, resolve_package_file
from harness.modeling.publish import read_provenance

pytestmark = pytest.mark.slow


def test_converted_checkpoint_matches_direct_gguf_load(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = resolve_package_file(SMOLLM2_PACKAGE_FILE)
    direct_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()

    start = time.perf_counter()
    model, tok = load_model(ModelSpec(name="smollm2-135m-instruct"))
    cached_load_s = time.perf_counter() - start
    print(f"cached load of converted SmolLM2: {cached_load_s:.2f} s")
    assert cached_load_s < 5

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and "gguf" not in json.dumps(config).lower()
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"] is True
    assert read_provenance(smollm2_dir)["kind"] == "gguf_conversion"
    assert (smollm2_dir / "model.safetensors").is_file()

    assert tok.chat_template == direct_tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == direct_tok.eos_token == "<|im_end|>"
    assert tok.pad_token == direct_tok.pad_token == "<|im_end|>"
    assert tok.get_vocab() == direct_tok.get_vocab()
    prompt = render_chat_prompt(tok, "Q: Janet has 16 eggs and eats 3. How many are left? \n\nA:")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tok(prompt, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-5, rtol=0)


def test_pruned_smollm2_generates_consistently(smollm2_dir, tmp_path):
    keep = [i for i in range(30) if not 10 <= i < 20]
    out = derive_pruned(smollm2_dir, keep, tmp_path / "smollm2-20L")
    model, tok = load_model(ModelSpec(name=str(out)))
    assert model.config.num_hidden_layers == 20
    assert load_tokenizer(out).chat_template == tok.chat_template
    ids = tok(render_chat_prompt(tok, "Q: What is 7 + 5? \n\nA:"), return_tensors="pt").input_ids
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
