"""objectives.engine: dense and chunked loss paths agree, errors are clear, memory stays bounded."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.errors import ObjectiveError, VocabMismatchError
from objectives.base import LossChunk, Objective, build_objective
from objectives.conformance import single_threaded
from objectives.engine import LossResult, chunked_loss, dense_loss

@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to CPU contention."""
    with single_threaded():
        yield

N, V, H, HT = 29, 40, 12, 20
REPO = Path(__file__).resolve().parents[1]


def setup(seed: int = 0, bias: bool = True, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(H, V, bias=bias).to(dtype)
    t_head = nn.Linear(HT, V, bias=True).to(dtype)
    with torch.no_grad():
        for p in (*head.parameters(), *t_head.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    hidden = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    t_hidden = torch.randn(N, HT, generator=g).to(dtype)
    y = torch.randint(0, V, (N,), generator=g)
    return hidden, head, t_hidden, t_head, y


def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("name, params", [("onpolicy_fkl", {}), ("veto", {"direction": "reverse"}), ("gkd", {"beta": 0.3}),
                                          ("sft", {}), ("onpolicy_pg", {})])
@pytest.mark.parametrize("chunk_size", [1, 7, 29, 1024])
def test_chunked_equals_dense(name: str, params: dict, chunk_size: int) -> None:
    obj = build_objective(name, params)
    sched = obj.schedule(2, 10)
    hidden, head, t_hidden, t_head, y = setup()
    ps = [hidden, head.weight, head.bias]
    dense = dense_loss(obj, sched, head(hidden), t_head(t_hidden).detach(), y)
    want = grads(dense.loss_sum, ps)
    out = chunked_loss(obj, sched, hidden, head, t_hidden, t_head, y, chunk_size=chunk_size)
    got = grads(out.loss_sum, ps)
    assert isinstance(out, LossResult) and out.n_tokens == dense.n_tokens == N
    assert torch.allclose(out.loss_sum, dense.loss_sum, rtol=1e-5, atol=1e-5)
    assert math.isclose(out.entropy_sum, dense.entropy_sum, rel_tol=1e-5)
    assert math.isclose(out.kl_sum, dense.kl_sum, rel_tol=1e-5, abs_tol=1e-6)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_loss_result_statistics() -> None:
    hidden, head, t_hidden, t_head, y = setup()
    s_logits, t_logits = head(hidden), t_head(t_hidden).detach()
    res = dense_loss(build_objective("onpolicy_fkl", {}), {}, s_logits, t_logits, y)
    ls, lt = torch.log_softmax(s_logits.detach(), -1), torch.log_softmax(t_logits, -1)
    assert res.entropy_sum == pytest.approx(float(-(ls.exp() * ls).sum()), rel=1e-5)
    assert res.kl_sum == pytest.approx(float((lt.exp() * (lt - ls)).sum()), rel=1e-5)
    assert res.kl_sum == pytest.approx(float(res.loss_sum.detach()), rel=1e-6)
    assert res.loss_mean == pytest.approx(float(res.loss_sum.detach()) / N)
    # no teacher: kl_sum is nan (both paths); a teacher given to a no-teacher objective still yields KL
    sft = build_objective("sft", {})
    assert math.isnan(dense_loss(sft, {}, s_logits, None, y).kl_sum)
    assert math.isnan(chunked_loss(sft, {}, hidden, head, None, None, y).kl_sum)
    assert dense_loss(sft, {}, s_logits, t_logits, y).kl_sum == pytest.approx(res.kl_sum, rel=1e-6)
    assert chunked_loss(sft, {}, hidden, head, t_hidden, t_head, y, chunk_size=5).kl_sum == pytest.approx(res.kl_sum, rel=1e-5)


def test_sampled_logprob_signal_paths_agree() -> None:
    obj = build_objective("onpolicy_pg", {"baseline": "none"})
    hidden, head, t_hidden, t_head, y = setup(1)
    t_logits = t_head(t_hidden).detach()
    t_lp = torch.log_softmax(t_logits, -1).gather(-1, y[:, None])[:, 0]
    ps = [hidden, head.weight]
    ref = dense_loss(obj, {}, head(hidden), t_logits, y)
    want = grads(ref.loss_sum, ps)
    variants = [
        dense_loss(obj, {}, head(hidden), None, y, teacher_target_logprobs=t_lp),
        chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, chunk_size=6),
        chunked_loss(obj, {}, hidden, head, None, None, y, chunk_size=6, teacher_target_logprobs=t_lp),
    ]
    for res in variants:
        assert torch.allclose(res.loss_sum, ref.loss_sum, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads(res.loss_sum, ps), want):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert math.isnan(variants[2].kl_sum) and not math.isnan(variants[1].kl_sum)


class _Spy(Objective):
    """Records what the engine hands to per_token_loss."""

    name = "test_spy"
    seen: list[LossChunk] = []

    def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> torch.Tensor:
        type(self).seen.append(chunk)
        return -torch.log_softmax(chunk.student_logits, -1).gather(-1, chunk.targets[:, None])[:, 0]


def test_objective_gets_only_its_declared_signal_in_fp32_chunks() -> None:
    _Spy.seen = []
    hidden, head, t_hidden, t_head, y = setup(dtype=torch.bfloat16)
    chunked_loss(_Spy(), {}, hidden, head, t_hidden, t_head, y, chunk_size=10)
    assert [c.n_tokens for c in _Spy.seen] == [10, 10, 9]
    for c in _Spy.seen:
        assert c.student_logits.dtype == torch.float32 and c.teacher_logits is None and c.teacher_target_logprobs is None


def test_tied_head_weight_gets_gradient_through_the_embedding() -> None:
    emb = nn.Embedding(V, H)
    head = nn.Linear(H, V, bias=False)
    head.weight = emb.weight  # tied, as in many small LMs
    ids = torch.randint(0, V, (N,))
    y = torch.randint(0, V, (N,))
    obj = build_objective("sft", {})
    loss_d = dense_loss(obj, {}, head(emb(ids) * 2.0), None, y).loss_sum
    (g_dense,) = torch.autograd.grad(loss_d, emb.weight)
    loss_c = chunked_loss(obj, {}, emb(ids) * 2.0, head, None, None, y, chunk_size=4).loss_sum
    (g_chunk,) = torch.autograd.grad(loss_c, emb.weight)
    assert torch.allclose(g_chunk, g_dense, rtol=1e-5, atol=1e-6)


def test_backward_scales_with_upstream_gradient_and_frozen_head() -> None:
    hidden, head, t_hidden, t_head, y = setup()
    obj = build_objective("onpolicy_rkl", {})
    base = grads(chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, 8).loss_sum, [hidden])[0]
    scaled = grads(3.0 * chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, 8).loss_sum / N, [hidden])[0]
    assert torch.allclose(scaled, base * 3.0 / N, rtol=1e-6)
    head.weight.requires_grad_(False)
    head.bias.requires_grad_(False)
    out = chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, 8)
    out.loss_sum.backward()
    assert hidden.grad is not None and head.weight.grad is None


def test_no_grad_and_single_backward() -> None:
    hidden, head, t_hidden, t_head, y = setup()
    obj = build_objective("tvd", {})
    with torch.no_grad():
        res = chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, 8)
    assert not res.loss_sum.requires_grad
    ref = dense_loss(obj, {}, head(hidden), t_head(t_hidden), y)
    assert torch.allclose(res.loss_sum, ref.loss_sum.detach(), rtol=1e-5)
    out = chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, 8)
    out.loss_sum.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        out.loss_sum.backward()


def test_bf16_model_chunked_path() -> None:
    hidden, head, t_hidden, t_head, y = setup(2, dtype=torch.bfloat16)
    obj = build_objective("onpolicy_fkl", {})
    out = chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, chunk_size=8)
    assert out.loss_sum.dtype == torch.float32 and float(out.loss_sum.detach()) >= 0
    gh, gw, gb = grads(out.loss_sum, [hidden, head.weight, head.bias])
    assert gh.dtype == gw.dtype == gb.dtype == torch.bfloat16
    dense = dense_loss(obj, {}, head(hidden), t_head(t_hidden).detach(), y)
    want = grads(dense.loss_sum, [hidden, head.weight])
    assert torch.allclose(out.loss_sum, dense.loss_sum, rtol=1e-4)
    assert torch.allclose(gh.float(), want[0].float(), rtol=2e-2, atol=2e-2)
    assert torch.allclose(gw.float(), want[1].float(), rtol=2e-2, atol=2e-2)


def test_autocast_logits_dtype_is_respected() -> None:
    hidden, head, t_hidden, t_head, y = setup(3)
    obj = build_objective("supervised_kd", {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, chunk_size=8)
        dense = dense_loss(obj, {}, head(hidden), t_head(t_hidden).detach(), y)
    assert out.loss_sum.dtype == torch.float32
    assert torch.allclose(out.loss_sum, dense.loss_sum, rtol=1e-4)
    with torch.no_grad():  # and both differ from fp32 logits: the logits really were bf16
        fp32 = dense_loss(obj, {}, head(hidden), t_head(t_hidden), y).loss_sum
    assert not torch.equal(out.loss_sum.detach(), fp32)


def test_vocab_mismatch_is_an_error_with_both_sizes() -> None:
    hidden, head, t_hidden, _, y = setup()
    other = nn.Linear(HT, V + 8)
    obj = build_objective("onpolicy_fkl", {})
    with pytest.raises(VocabMismatchError, match=rf"{V}.*{V + 8}"):
        chunked_loss(obj, {}, hidden, head, t_hidden, other, y)
    with pytest.raises(VocabMismatchError, match=rf"{V}.*{V + 8}"):
        dense_loss(obj, {}, head(hidden), other(t_hidden), y)


def test_input_errors() -> None:
    hidden, head, t_hidden, t_head, y = setup()
    fkl = build_objective("onpolicy_fkl", {})
    with pytest.raises(ObjectiveError, match="needs the teacher"):
        chunked_loss(fkl, {}, hidden, head, None, None, y)
    with pytest.raises(ObjectiveError, match="needs full teacher logits"):
        dense_loss(fkl, {}, head(hidden), None, y)
    with pytest.raises(ObjectiveError, match="teacher log-probabilities"):
        dense_loss(build_objective("onpolicy_pg", {"baseline": "none"}), {}, head(hidden), None, y)
    with pytest.raises(ObjectiveError, match=r"token ids in \[0, 40\)"):
        dense_loss(fkl, {}, head(hidden), t_head(t_hidden), torch.full((N,), -100))
    with pytest.raises(ObjectiveError, match="shape"):
        dense_loss(fkl, {}, head(hidden), t_head(t_hidden), y[:5])
    with pytest.raises(ObjectiveError, match="positions"):
        chunked_loss(fkl, {}, hidden, head, t_hidden[:5], t_head, y)
    with pytest.raises(ObjectiveError, match="chunk_size"):
        chunked_loss(fkl, {}, hidden, head, t_hidden, t_head, y, chunk_size=0)

    class Mean(Objective):
        name = "test_mean"

        def per_token_loss(self, chunk, sched):
            return torch.log_softmax(chunk.student_logits, -1).mean()

    with pytest.raises(ObjectiveError, match=r"must return a \[29\] tensor"):
        dense_loss(Mean(), {}, head(hidden), None, y)


def test_empty_batch() -> None:
    hidden, head, _, _, _ = setup()
    empty_h = hidden[:0].detach().requires_grad_()
    res = chunked_loss(build_objective("sft", {}), {}, empty_h, head, None, None, torch.zeros(0, dtype=torch.long))
    assert res.n_tokens == 0 and float(res.loss_sum.detach()) == 0.0
    res.loss_sum.backward()


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from objectives.base import build_objective
    from objectives.conformance import cpu_memory_profile
    from objectives.engine import chunked_loss, dense_loss
    torch.manual_seed(0)
    n, v, h = 1024, 49152, 64
    obj = build_objective(sys.argv[1], {})
    head, t_head = torch.nn.Linear(h, v, bias=False), torch.nn.Linear(h, v, bias=False)
    hidden = torch.randn(n, h, requires_grad=True)
    t_hidden = torch.randn(n, h)
    y = torch.randint(0, v, (n,))
    def dense():
        with torch.no_grad():
            t_logits = t_head(t_hidden)
        dense_loss(obj, {}, head(hidden), t_logits, y).loss_sum.backward()
    def chunked():
        chunked_loss(obj, {}, hidden, head, t_hidden, t_head, y, chunk_size=128).loss_sum.backward()
    dense()  # warm-up
    (d_peak, d_max), (c_peak, c_max) = cpu_memory_profile(dense), cpu_memory_profile(chunked)
    print(json.dumps({"dense": d_peak, "chunked": c_peak, "dense_largest": d_max, "chunked_largest": c_max}))
    """
)


@pytest.mark.slow
def test_chunked_peak_memory_at_real_vocab_size() -> None:
    """1024 positions x 49,152 vocab (SmolLM2's), hidden 64: chunked peak well below dense (subprocess)."""
    import json

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "onpolicy_fkl"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    logits_bytes = 1024 * 49152 * 4
    assert peaks["dense"] > 3 * logits_bytes  # dense holds several [N, V] tensors
    assert peaks["chunked"] < 0.25 * peaks["dense"]
    assert peaks["dense_largest"] >= logits_bytes
    assert peaks["chunked_largest"] < logits_bytes / 4  # never a full [N, V] tensor, only [128, V] chunks
