"""Generation batches sized by memory (`eval.batch_size: auto`) and the out-of-memory backoff.

The sizing arithmetic is checked with hand-made numbers at its edges; the rest runs on CPU: `auto`
resolved end to end on the tiny model, ranks agreeing on one size (simulated ranks, as in
tests/test_eval_shards.py), and CUDA out-of-memory errors injected into `model.generate`.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import torch

import harness.generation
from harness import batch_sizing
from harness.batch_sizing import (AUTO_MAX_BATCH, FALLBACK_BATCH, HOST_SAFETY, ModelGeometry, auto_batch_size,
                                  available_memory_bytes, model_geometry, resolve_batch_size, row_bytes)
from harness.generation import GenerationParams, HFGenerationBackend, encode_prompts
from harness.ranks import Shards
from tests.test_eval_shards import PROMPTS, _Turns
from tests.training_helpers import load_tiny, write_gsm8k

# 2 layers, 4 heads of 8 (MHA), hidden 32, MLP 64, vocab 100, fp32.
MHA = ModelGeometry(layers=2, attention_heads=4, kv_heads=4, head_dim=8, hidden=32, intermediate=64, vocab=100,
                    dtype_bytes=4)
GQA = ModelGeometry(**{**MHA.__dict__, "kv_heads": 1})


# ----------------------------------------------------------------------------- the arithmetic


def test_row_bytes_by_hand():
    # KV: 2 x 2 layers x 4 heads x 8 dims x 4 bytes = 512 B per token, x (10 prompt + 6 new) = 8192
    # logits: 100 x 4 B x 8 copies = 3200; prefill: 10 tokens x (2 x 64 + 4 x 32) x 4 B = 10240
    assert MHA.kv_bytes_per_token() == 512
    assert row_bytes(MHA, 10, 6) == 8192 + 3200 + 10240 == 21632
    # GQA: one kv head instead of four, so the cache is a quarter; nothing else changes.
    assert GQA.kv_bytes_per_token() == 128
    assert row_bytes(GQA, 10, 6) == 2048 + 3200 + 10240
    # Eager attention materializes heads x P x P fp32 scores during the prefill.
    eager = ModelGeometry(**{**MHA.__dict__, "attention_scores_materialized": True})
    assert row_bytes(eager, 10, 6) == 21632 + 4 * 10 * 10 * 4


def test_tiny_free_memory_still_gives_one_row():
    for free in (0, 1, 21632):  # 21632 B is one row, but only half of it may be planned
        assert auto_batch_size(free, MHA, 10, 6, rows=50, safety=0.5) == 1


def test_batch_is_the_rows_that_fit_in_the_planned_share():
    row = row_bytes(MHA, 10, 6)
    assert auto_batch_size(2 * 3 * row, MHA, 10, 6, rows=50, safety=0.5) == 3
    assert auto_batch_size(2 * 3 * row - 1, MHA, 10, 6, rows=50, safety=0.5) == 2  # a byte short of the third
    assert auto_batch_size(3 * row, MHA, 10, 6, rows=50, safety=1.0) == 3
    # Longer prompts or completions cost more per row, so fewer fit in the same memory.
    assert auto_batch_size(2 * 3 * row, MHA, 10, 60, rows=50, safety=0.5) == 1


def test_huge_free_memory_is_capped_by_the_rows_then_the_documented_maximum():
    assert auto_batch_size(10**15, MHA, 10, 6, rows=5, safety=0.8) == 5
    assert auto_batch_size(10**15, MHA, 10, 6, rows=10_000, safety=0.8) == AUTO_MAX_BATCH == 256
    assert auto_batch_size(10**15, MHA, 10, 6, rows=10_000, safety=0.8, cap=32) == 32
    assert auto_batch_size(10**15, MHA, 10, 6, rows=0, safety=0.8) == 1  # an empty call still has a size


def test_gqa_fits_more_rows_than_mha_in_the_same_memory():
    free = 10 * row_bytes(MHA, 100, 100)
    mha = auto_batch_size(free, MHA, 100, 100, rows=1000, safety=1.0)
    gqa = auto_batch_size(free, GQA, 100, 100, rows=1000, safety=1.0)
    assert mha == 10
    assert gqa == free // row_bytes(GQA, 100, 100) and gqa > mha


def test_bad_safety_or_cap_is_refused():
    with pytest.raises(ValueError, match="safety"):
        auto_batch_size(10**9, MHA, 10, 6, rows=5, safety=0)
    with pytest.raises(ValueError, match="cap"):
        auto_batch_size(10**9, MHA, 10, 6, rows=5, safety=0.5, cap=0)


# ----------------------------------------------------------------------------- geometry from a config


class _Model:
    def __init__(self, dtype=torch.bfloat16, **config):
        self.config = SimpleNamespace(**config)
        self._p = torch.zeros(1, dtype=dtype)

    def parameters(self):
        return iter([self._p])


def test_geometry_of_an_mha_config_without_kv_heads_or_head_dim():
    g = model_geometry(_Model(num_hidden_layers=3, num_attention_heads=8, hidden_size=64, vocab_size=50,
                              intermediate_size=100))
    assert (g.layers, g.kv_heads, g.head_dim, g.dtype_bytes, g.intermediate) == (3, 8, 8, 2, 100)
    # head_dim given as null (several configs do) falls back the same way; no intermediate_size: 4 x hidden
    g = model_geometry(_Model(num_hidden_layers=3, num_attention_heads=8, hidden_size=64, vocab_size=50,
                              head_dim=None, dtype=torch.float32))
    assert (g.head_dim, g.dtype_bytes, g.intermediate) == (8, 4, 256)


def test_geometry_of_a_gqa_config_with_its_own_head_dim():
    # Gemma-like: head_dim is not hidden / heads, and keys/values are shared by groups of heads.
    g = model_geometry(_Model(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                              hidden_size=1024, vocab_size=50, _attn_implementation="eager"))
    assert (g.kv_heads, g.head_dim, g.attention_scores_materialized) == (2, 256, True)
    assert g.kv_bytes_per_token() == 2 * 2 * 2 * 256 * 2


def test_geometry_reads_the_text_config_of_a_multimodal_model():
    inner = SimpleNamespace(num_hidden_layers=5, num_attention_heads=4, hidden_size=32, vocab_size=10)
    model = _Model()
    model.config = SimpleNamespace(get_text_config=lambda: inner)
    assert model_geometry(model).layers == 5


def test_geometry_of_the_tiny_model_matches_its_config(tiny_model_dir):
    model, _ = load_tiny(tiny_model_dir)
    c = model.config
    g = model_geometry(model)
    assert (g.layers, g.attention_heads, g.kv_heads, g.vocab, g.dtype_bytes) == \
        (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size, 4)
    assert g.kv_heads < g.attention_heads, "the tiny model is GQA, like SmolLM2 and Qwen2"


def test_a_config_that_cannot_be_sized_names_the_setting_and_the_fix():
    with pytest.raises(ValueError, match=r"eval\.batch_size: auto cannot size .* no vocab_size .* fixed batch size"):
        model_geometry(_Model(num_hidden_layers=3, num_attention_heads=8, hidden_size=64), "eval.batch_size")


# ----------------------------------------------------------------------------- reading free memory


def test_host_memory_is_memavailable():
    free = available_memory_bytes(torch.device("cpu"))
    assert isinstance(free, int) and free > 0
    try:
        line = next(x for x in open("/proc/meminfo") if x.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/meminfo MemAvailable here (psutil's figure is used)")
    # The figure moves while other processes run: the same order of magnitude is what can be asserted.
    assert abs(free - int(line.split()[1]) * 1024) < 0.5 * free


def test_cuda_memory_is_driver_free_plus_the_allocators_unused_cache(monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * gib)
    assert available_memory_bytes(torch.device("cuda", 0)) == 12 * gib
    assert batch_sizing.safety_for(torch.device("cuda", 0)) == 0.8 and batch_sizing.safety_for(torch.device("cpu")) == 0.5


def test_resolve_passes_fixed_sizes_through_and_sizes_auto_from_memory(monkeypatch):
    model = _Model(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64, vocab_size=100,
                   dtype=torch.float32)
    agreed: list[int] = []

    def agree(size):
        agreed.append(size)
        return size - 1  # another rank had less room

    assert resolve_batch_size(8, model, longest_prompt_tokens=10, max_new_tokens=6, rows=50, agree=agree) == 8
    assert agreed == [], "a fixed size is the same on every rank: no collective"
    monkeypatch.setattr(batch_sizing, "available_memory_bytes", lambda device: 2 * 5 * row_bytes(MHA, 10, 6))
    assert resolve_batch_size("auto", model, longest_prompt_tokens=10, max_new_tokens=6, rows=50) == 5
    assert resolve_batch_size("auto", model, longest_prompt_tokens=10, max_new_tokens=6, rows=50, agree=agree) == 4
    assert agreed == [5]
    monkeypatch.setattr(batch_sizing, "available_memory_bytes", lambda device: None)
    assert resolve_batch_size("auto", model, longest_prompt_tokens=10, max_new_tokens=6, rows=50) == FALLBACK_BATCH
    assert resolve_batch_size("auto", model, longest_prompt_tokens=10, max_new_tokens=6, rows=3) == 3
    with pytest.raises(ValueError, match=r"eval\.batch_size: give a positive integer or `auto`"):
        resolve_batch_size(0, model, longest_prompt_tokens=1, max_new_tokens=1, rows=1, setting="eval.batch_size")


def test_eval_batch_size_accepts_auto_and_ints_and_names_the_fix_otherwise():
    from harness.config import EvalConfig, validate
    from harness.errors import ConfigError

    assert EvalConfig().batch_size == 8, "the default stays 8: the smoke suite's numbers cannot move"
    assert EvalConfig(batch_size="auto").batch_size == "auto"
    assert validate(EvalConfig, {"batch_size": 16}, "x").batch_size == 16
    for bad in ("big", 0, -3, 2.5):
        with pytest.raises(ConfigError, match=r"batch_size: .*give a positive integer .* or `auto`"):
            validate(EvalConfig, {"batch_size": bad}, "x")


# ----------------------------------------------------------------------------- auto on the tiny model


def _free_for(model, tok, prompts, params, rows: int) -> int:
    """Host bytes under which `auto` resolves to exactly `rows` for this call (HOST_SAFETY of it planned)."""
    longest = max(len(x) for x in encode_prompts(tok, prompts, params.max_prompt_tokens))
    return int(rows * row_bytes(model_geometry(model), longest, params.max_new_tokens) / HOST_SAFETY) + 1


def test_auto_on_cpu_generates_what_the_resolved_fixed_size_generates(tiny_model_dir, monkeypatch):
    model, tok = load_tiny(tiny_model_dir)
    params = GenerationParams(max_new_tokens=5)
    auto = HFGenerationBackend(model, tok, batch_size="auto")
    outs = auto.generate(PROMPTS, params)
    assert auto.last_batch_size == len(PROMPTS), "the tiny model's rows fit many times over: capped by the rows"
    key = lambda outs: [(o.prompt, o.text, o.token_ids, o.finish_reason) for o in outs]  # noqa: E731
    assert key(outs) == key(HFGenerationBackend(model, tok, batch_size=len(PROMPTS)).generate(PROMPTS, params))

    monkeypatch.setattr(batch_sizing, "available_memory_bytes", lambda device: _free_for(model, tok, PROMPTS, params, 3))
    calls = []
    original = type(model).generate
    model.generate = (lambda self, **kw: calls.append(kw["input_ids"].shape[0]) or original(self, **kw)).__get__(model)
    outs = auto.generate(PROMPTS, params)
    assert auto.last_batch_size == 3 and calls == [3, 3, 1]
    assert key(outs) == key(HFGenerationBackend(model, tok, batch_size=3).generate(PROMPTS, params))


def test_ranks_settle_on_the_smallest_size_so_their_plans_agree(tiny_model_dir, monkeypatch):
    from harness.eval_runner import generate_shared

    model, tok = load_tiny(tiny_model_dir)
    params = GenerationParams(max_new_tokens=5, temperature=50.0, top_p=1.0, n=2, seed=3)  # sampled: seeds by batch
    room = {0: _free_for(model, tok, PROMPTS, params, 3), 1: _free_for(model, tok, PROMPTS, params, 2)}
    here = threading.local()
    monkeypatch.setattr(batch_sizing, "available_memory_bytes", lambda device: room[here.rank])

    def rank(member):
        here.rank = member.rank
        backend = HFGenerationBackend(model, tok, batch_size="auto")
        return generate_shared(backend, PROMPTS, params, Shards(member)), backend.last_batch_size

    (outs0, size0), (outs1, size1) = _Turns(2).run(rank)
    assert size0 == size1 == 2, "rank 0 alone would take 3 rows; the plan must be the same on both"
    here.rank = 0
    alone = HFGenerationBackend(model, tok, batch_size="auto")
    assert [len(b) for b in alone.plan(PROMPTS, params)] == [3, 3, 3, 3, 2], "alone, rank 0 would plan 3 rows"
    key = lambda outs: [(o.prompt, o.sample_index, o.token_ids) for o in outs]  # noqa: E731
    one = HFGenerationBackend(model, tok, batch_size=2).generate(PROMPTS, params)
    assert key(outs0) == key(outs1) == key(one)


def test_a_rank_that_cannot_size_its_batch_fails_every_rank_instead_of_hanging(tiny_model_dir, monkeypatch):
    model, tok = load_tiny(tiny_model_dir)
    here = threading.local()

    def free(device):
        if here.rank == 1:
            raise RuntimeError("CUDA error: device lost")
        return 10**12

    monkeypatch.setattr(batch_sizing, "available_memory_bytes", free)

    def rank(member):
        here.rank = member.rank
        return HFGenerationBackend(model, tok, batch_size="auto").plan(PROMPTS, GenerationParams(),
                                                                        agree=Shards(member).minimum)

    r0, r1 = _Turns(2).run(rank)
    assert isinstance(r1, RuntimeError) and "device lost" in str(r1)
    assert isinstance(r0, RuntimeError) and "another rank could not size its generation batch" in str(r0)


def test_evaluation_records_the_batch_size_that_ran(tiny_model_dir, tmp_path):
    from harness.config import EvalConfig, TaskConfig
    from harness.eval_runner import evaluate_model

    model, tok = load_tiny(tiny_model_dir)
    gsm = tmp_path / "gsm.jsonl"
    write_gsm8k(gsm, 5, worked=False)
    tasks = [TaskConfig(name="gsm8k", eval_source=f"file:{gsm}", eval_limit=5)]
    recorded = {}
    for setting in ("auto", 5, 2):
        cfg = EvalConfig(batch_size=setting, gsm8k={"max_new_tokens": 4}, diagnostics=False)
        out = tmp_path / str(setting)
        agg = evaluate_model(model, tok, tasks, cfg, out, data_dir=None, progress=False)["gsm8k"]
        written = json.loads((out / "eval" / "gsm8k.json").read_text())
        assert (written["batch_size"], written["oom_splits"]) == (agg["batch_size"], 0)
        assert "batch_size" not in json.dumps(written["protocol"]), "not part of the protocol: sizes stay comparable"
        recorded[setting] = (agg["batch_size"], written["protocol"]["protocol_hash"],
                             (out / "eval" / "gsm8k.jsonl").read_text())
    assert [recorded[s][0] for s in ("auto", 5, 2)] == [5, 5, 2]
    assert recorded["auto"] == recorded[5], "auto resolved to 5 rows here: the same records as a fixed 5"
    assert recorded[2][1] == recorded[5][1], "one protocol hash whatever the batch size"


# ----------------------------------------------------------------------------- out-of-memory backoff


def _oom_above(model, max_rows: int) -> list[int]:
    """Make `model.generate` raise CUDA's out-of-memory error for batches of more than `max_rows`
    rows; returns the list of batch sizes it was called with."""
    calls: list[int] = []
    original = type(model).generate

    def generate(self, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if calls[-1] > max_rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, **kwargs)

    model.generate = generate.__get__(model)
    return calls


def test_an_oom_batch_is_halved_and_gives_the_smaller_batches_outputs(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    prompts = PROMPTS + ["one more prompt"]  # 8 rows: halves of 4 are exactly the batch-4 plan
    params = GenerationParams(max_new_tokens=5)
    reference = HFGenerationBackend(model, tok, batch_size=4).generate(prompts, params)
    calls = _oom_above(model, 4)
    backend = HFGenerationBackend(model, tok, batch_size=8)
    outs = backend.generate(prompts, params)
    assert calls == [8, 4, 4] and backend.oom_splits == 1
    key = lambda outs: [(o.prompt, o.sample_index, o.text, o.token_ids, o.finish_reason) for o in outs]  # noqa: E731
    assert key(outs) == key(reference)
    assert backend.generated_tokens == sum(len(o.token_ids) for o in outs), "the failed attempt counts nothing"


def test_repeated_splits_cover_every_row_once_in_order(tiny_model_dir, monkeypatch):
    model, tok = load_tiny(tiny_model_dir)
    params = GenerationParams(max_new_tokens=4, temperature=50.0, top_p=1.0, n=2, seed=1)
    emptied = []
    monkeypatch.setattr(harness.generation, "_release_cuda_cache", lambda: emptied.append(1))
    calls = _oom_above(model, 2)
    backend = HFGenerationBackend(model, tok, batch_size=7)
    outs = backend.generate(PROMPTS, params)
    # 14 rows in batches of 7: 7 -> 4 (-> 2 + 2) + 3 (-> 2 + 1), twice.
    assert calls == [7, 4, 2, 2, 3, 2, 1] * 2
    assert backend.oom_splits == 6 and len(emptied) == 6, "each out-of-memory error empties the cache once"
    assert [(o.prompt, o.sample_index) for o in outs] == [(p, j) for p in PROMPTS for j in range(2)]
    calls.clear()
    again = HFGenerationBackend(model, tok, batch_size=7).generate(PROMPTS, params)
    assert [o.token_ids for o in again] == [o.token_ids for o in outs], "split batches are seeded reproducibly"


def test_an_oom_at_one_row_is_raised_naming_the_setting_and_the_fix(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    calls = _oom_above(model, 0)
    backend = HFGenerationBackend(model, tok, batch_size=2, setting="eval.batch_size")
    with pytest.raises(torch.cuda.OutOfMemoryError) as err:
        backend.generate(["a b c", "x"], GenerationParams(max_new_tokens=7))
    assert calls == [2, 1]
    message = str(err.value)
    assert message.startswith("eval.batch_size: a batch of one row (")
    assert "+ up to 7 new" in message and "no batch size fits" in message and "max_new_tokens" in message
    assert "Tried to allocate 2.00 GiB" in message, "the original error is kept"


# ----------------------------------------------------------------------------- the training stage


def test_train_generation_batch_size_accepts_auto():
    from harness.config import TrainConfig, validate
    from harness.errors import ConfigError
    from harness.training.loop import generation_batch_size

    assert TrainConfig().generation_batch_size is None
    tc = TrainConfig(batch_size=16, micro_batch_size=4, generation_batch_size="auto")
    assert generation_batch_size(tc, 2) == "auto", "the backend caps each call at its rows: the share"
    with pytest.raises(ConfigError, match=r"generation_batch_size: .*give a positive integer .* or `auto`"):
        validate(TrainConfig, {"generation_batch_size": "max"}, "x")


@pytest.mark.parametrize("setting,free,oom_above,calls,record", [
    ("auto", 0, None, [1] * 16, {"batch_sizes": [1], "oom_splits": 0}),  # no room: one row per call
    (None, None, 4, [8, 4, 4] * 2, {"batch_sizes": [8], "oom_splits": 2}),  # whole share, split on OOM
], ids=["auto_one_row", "oom_split"])
def test_training_rollouts_follow_the_setting_and_record_what_ran(tiny_model_dir, tmp_path, monkeypatch, setting,
                                                                  free, oom_above, calls, record):
    from harness.training.loop import train
    from tests.training_helpers import make_setup, run_config

    setup = make_setup(tiny_model_dir)
    if free is not None:
        monkeypatch.setattr(batch_sizing, "available_memory_bytes", lambda device: free)
    seen = _oom_above(setup.student, oom_above if oom_above is not None else 10**6)
    cfg = run_config(tiny_model_dir, "onpolicy_fkl", batch_size=8, micro_batch_size=2, generation_batch_size=setting)
    res = train(cfg, tmp_path / "r", setup, max_steps=2, progress=False)
    assert seen == calls
    assert res.summary["generation_batches"] == record
