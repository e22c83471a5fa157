"""Generation backend: stop strings are matched in generated text only; outputs are cut consistently."""

from __future__ import annotations

import torch

from harness.generation import GenerationParams, HFGenerationBackend, StopOnStrings, truncate_at_stop
from tests.training_helpers import load_tiny


def test_stop_criterion_ignores_the_prompt_tail(tiny_model_dir):
    _, tok = load_tiny(tiny_model_dir)
    prompt = tok("question\n", add_special_tokens=False)["input_ids"]
    first = tok("\nanswer", add_special_tokens=False)["input_ids"]
    crit = StopOnStrings(tok, ["\n\n"], prompt_width=len(prompt))
    ids = torch.tensor([prompt + first])
    assert tok.decode(prompt + first).count("\n\n") == 1, "the prompt's newline and the first token form the stop string"
    assert not crit(ids).item(), "a stop string straddling prompt and completion does not stop generation"
    more = tok("\nanswer\n\n", add_special_tokens=False)["input_ids"]
    assert crit(torch.tensor([prompt + more])).item()


def test_truncate_at_stop_keeps_tokens_through_the_stop(tiny_model_dir):
    _, tok = load_tiny(tiny_model_dir)
    ids = tok("one two\n\nthree", add_special_tokens=False)["input_ids"]
    text, kept, reason = truncate_at_stop(tok, ids, ["\n\n"], {tok.eos_token_id})
    assert reason == "stop" and text == "one two"
    assert tok.decode(kept).endswith("\n\n") and len(kept) < len(ids)
    text, kept, reason = truncate_at_stop(tok, ids + [tok.eos_token_id], [], {tok.eos_token_id})
    assert reason == "eos" and kept[-1] == tok.eos_token_id


def test_backend_output_shape_and_determinism(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    backend = HFGenerationBackend(model, tok, batch_size=2)
    prompts = ["a b c", "a much longer prompt with more words in it", "x"]
    params = GenerationParams(max_new_tokens=5, temperature=1.0, top_p=1.0, n=2, seed=7, stop=("\n\n",))
    a = backend.generate(prompts, params)
    b = backend.generate(prompts, params)
    assert [o.prompt for o in a] == [p for p in prompts for _ in range(2)]
    assert [o.sample_index for o in a] == [0, 1] * 3
    assert [o.token_ids for o in a] == [o.token_ids for o in b], "seeded sampling is reproducible"
    assert all(1 <= len(o.token_ids) <= 5 for o in a)
