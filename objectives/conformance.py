"""Conformance kit: checks that an objective (built-in or plugin) honours the contract.

Usage for plugin authors::

    from objectives.conformance import assert_conformant
    assert_conformant(MyObjective)                      # or a registered name, or an instance
    assert_conformant("my_objective", {"alpha": 0.2})

Each ``check_*`` function takes an ``Objective`` instance and returns a ``CheckResult`` whose status
is "pass", "fail" or "skip" (with the reason). Checks use small synthetic tensors on CPU (the
memory check uses CUDA when available) and run in well under a second each.

The kit holds no knowledge of particular objectives: each objective restates its loss in
``reference_loss`` (written with ``objectives.reference``, independently of
``objectives.divergences``) and lists checks of its own properties in ``conformance_checks``, next
to its class. An objective without a reference formula FAILS ``reference_gradient``. The helpers
below (``synthetic_logits``, ``per_token``, ``outcome``, ``guarded``, ...) are public so that those
objective-specific checks are written the same way as the kit's.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from harness.errors import ObjectiveError
from objectives.base import LossChunk, Objective, RowInfo, SequenceSource, TeacherSignal, get_objective
from objectives.contract import PROGRESS_GRID
from objectives.engine import BEHAVIOUR_STAT, chunked_loss, dense_loss, make_loss_chunk, row_token_stats

__all__ = [
    "CheckResult",
    "assert_conformant",
    "check_accumulation",
    "check_bf16",
    "check_chunked_matches_dense",
    "check_chunked_memory",
    "check_contract",
    "check_direction",
    "check_reference",
    "check_row_weights_invariance",
    "check_rows_reach",
    "check_teacher_prompt",
    "check_weight_one_identity",
    "check_zero_at_match",
    "cpu_memory_profile",
    "all_close",
    "end_sched",
    "guarded",
    "max_diff",
    "mid_sched",
    "outcome",
    "peak_memory_bytes",
    "per_token",
    "run_conformance",
    "single_threaded",
    "synthetic_advantage",
    "synthetic_behaviour",
    "synthetic_case",
    "synthetic_logits",
    "synthetic_targets",
]

Status = Literal["pass", "fail", "skip"]
# reference(student_logits fp64 [N,V], teacher_logits fp64 [N,V], targets [N], sched, rows) -> [N]:
# the signature of Objective.reference_loss (bound to its objective)
Reference = Callable[[Tensor, Tensor, Tensor, dict, RowInfo], Tensor]


@dataclass
class CheckResult:
    """Outcome of one conformance check."""

    name: str
    status: Status
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def __str__(self) -> str:
        return f"[{self.status.upper()}] {self.name}" + (f": {self.detail}" if self.detail else "")


def outcome(name: str, problems: list[str], ok_detail: str = "") -> CheckResult:
    return CheckResult(name, "fail", "; ".join(problems)) if problems else CheckResult(name, "pass", ok_detail)


# ---------------------------------------------------------------------------------------------
# Synthetic data helpers
# ---------------------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def synthetic_logits(n: int, v: int, seed: int, scale: float = 2.0, dtype: torch.dtype = torch.float32) -> Tensor:
    return (torch.randn(n, v, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


def synthetic_targets(n: int, v: int, seed: int) -> Tensor:
    return torch.randint(0, v, (n,), generator=_gen(seed))


def synthetic_case(n: int, v: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Student logits, teacher logits (fp32 [n, v]) and targets [n] from seeds seed, seed+1, seed+2."""
    return synthetic_logits(n, v, seed), synthetic_logits(n, v, seed + 1), synthetic_targets(n, v, seed + 2)


def _needs_teacher(obj: Objective) -> bool:
    return obj.required_teacher_signal() is not TeacherSignal.NONE


def mid_sched(obj: Objective) -> dict[str, float]:
    return obj.schedule(3, 10)


def end_sched(obj: Objective) -> dict[str, float]:
    return obj.schedule(9, 10)


def per_token(obj: Objective, sched: dict, s: Tensor, t: Tensor | None, y: Tensor) -> Tensor:
    return obj.per_token_loss(make_loss_chunk(obj, s, t, y), sched)


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def all_close(a: Tensor, b: Tensor, rtol: float, atol: float) -> bool:
    return bool(torch.allclose(a.detach().double(), b.detach().double(), rtol=rtol, atol=atol))


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch CPU ops on one thread, then restore the previous setting.

    The kit's tensors are tiny: intra-op threads only add overhead, and on a busy machine
    (other processes competing for cores) multi-threaded tiny ops can be 100x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def guarded(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a crashing objective is a failed check, not a crash
        return CheckResult(name, "fail", f"raised {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------
# Generic checks
# ---------------------------------------------------------------------------------------------
def check_contract(obj: Objective) -> CheckResult:
    """Params, source mix, schedule, signals and the output shape/dtype follow the contract."""

    def run() -> CheckResult:
        problems: list[str] = []
        cls = type(obj)
        if cls.Params.model_config.get("extra") != "forbid":
            problems.append("Params must set extra='forbid'")
        for progress in (0.0, 0.25, 0.5, 1.0):
            mix = obj.source_mix(progress)
            if not mix or not all(isinstance(k, SequenceSource) for k in mix):
                problems.append(f"source_mix({progress}) must map SequenceSource to probabilities, got {mix}")
                continue
            vals = list(mix.values())
            if any(not math.isfinite(p) or p < 0 for p in vals) or abs(sum(vals) - 1.0) > 1e-9:
                problems.append(f"source_mix({progress}) probabilities must be ≥ 0 and sum to 1, got {mix}")
        for step, total in ((0, 1), (0, 10), (5, 10), (9, 10), (12, 10)):
            sched = obj.schedule(step, total)
            if not isinstance(sched, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and math.isfinite(v) for k, v in sched.items()
            ):
                problems.append(f"schedule({step}, {total}) must return dict[str, finite float], got {sched!r}")
        declared = set(obj.needs().sources)
        used = {src for p in PROGRESS_GRID for src, w in obj.source_mix(p).items() if w > 0}
        if not used <= declared:
            problems.append(f"source_mix uses {sorted(s.value for s in used - declared)} at some progress, but "
                            f"sequence_sources() declares only {sorted(s.value for s in declared)}")
        if not isinstance(obj.required_teacher_signal(), TeacherSignal):
            problems.append("required_teacher_signal() must return a TeacherSignal")
        if obj.divergence_direction not in (None, "forward", "reverse"):
            problems.append(f"divergence_direction must be None, 'forward' or 'reverse', got {obj.divergence_direction!r}")
        desc = cls.describe()
        for key in ("name", "description", "source", "teacher_signal", "params"):
            if key not in desc:
                problems.append(f"describe() lacks {key!r}")
        n, v = 6, 11
        s = synthetic_logits(n, v, 1).requires_grad_()
        out = per_token(obj, mid_sched(obj), s, synthetic_logits(n, v, 2), synthetic_targets(n, v, 3))
        if not isinstance(out, Tensor) or out.shape != (n,):
            problems.append(f"per_token_loss must return shape [{n}], got {getattr(out, 'shape', type(out))}")
        elif out.dtype != torch.float32:
            problems.append(f"per_token_loss must return float32 for fp32 inputs, got {out.dtype}")
        elif not torch.isfinite(out).all():
            problems.append("per_token_loss returned non-finite values on ordinary inputs")
        elif not out.requires_grad:
            problems.append("per_token_loss output does not depend on student_logits")
        return outcome("contract", problems)

    return guarded("contract", run)


def check_zero_at_match(obj: Objective) -> CheckResult:
    """Student == teacher gives (numerically) zero loss and zero gradient at every position."""
    name = "zero_at_match"

    def run() -> CheckResult:
        if not _needs_teacher(obj):
            return CheckResult(name, "skip", "objective uses no teacher signal")
        sched = end_sched(obj)
        if not obj.teacher_is_fixed_point(sched):
            return CheckResult(name, "skip", f"teacher is not the optimum under sched {sched}")
        n, v = 16, 37
        s = synthetic_logits(n, v, 11).requires_grad_()
        loss = per_token(obj, sched, s, s.detach().clone(), synthetic_targets(n, v, 12))
        (grad,) = torch.autograd.grad(loss.sum(), s)
        problems = []
        loss = loss.detach()
        if float(loss.abs().max()) > 1e-6:
            problems.append(f"max |loss| = {float(loss.abs().max()):.3g} (> 1e-6)")
        if float(grad.abs().max()) > 1e-6:
            problems.append(f"max |grad| = {float(grad.abs().max()):.3g} (> 1e-6)")
        return outcome(name, problems)

    return guarded(name, run)


def _direction_pair() -> tuple[Tensor, Tensor]:
    """A broad (two-mode) and a narrow (one-mode) distribution over 8 tokens, as logits."""
    rest = [0.02 / 6] * 6
    broad = torch.tensor([[0.49, 0.49, *rest]], dtype=torch.float32).log()
    narrow = torch.tensor([[0.97, 0.01, *rest]], dtype=torch.float32).log()
    return broad, narrow


def check_direction(obj: Objective) -> CheckResult:
    """Forward objectives punish missing teacher mass more; reverse ones punish extra student mass.

    "missing": teacher broad, student narrow. "extra": teacher narrow, student broad (the mirror
    image, so for plain KL the two losses swap). Uses the end-of-schedule values.
    """
    name = "direction"

    def run() -> CheckResult:
        direction = obj.divergence_direction
        if direction is None or not _needs_teacher(obj):
            return CheckResult(name, "skip", "objective declares no divergence direction")
        sched = end_sched(obj)
        broad, narrow = _direction_pair()
        y = torch.zeros(1, dtype=torch.long)
        missing = float(per_token(obj, sched, narrow, broad, y).detach().sum())
        extra = float(per_token(obj, sched, broad, narrow, y).detach().sum())
        detail = f"loss(missing teacher mass)={missing:.4f}, loss(extra student mass)={extra:.4f}"
        ok = missing > extra * 1.05 if direction == "forward" else extra > missing * 1.05
        return CheckResult(name, "pass" if ok else "fail", f"{direction}: {detail}")

    return guarded(name, run)


def _heads(v: int, h: int, ht: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[nn.Linear, nn.Linear]:
    g = _gen(seed)
    student = nn.Linear(h, v, bias=True).to(dtype)
    teacher = nn.Linear(ht, v, bias=False).to(dtype)
    with torch.no_grad():
        student.weight.copy_(torch.randn(v, h, generator=g) / math.sqrt(h) * 3)
        student.bias.copy_(torch.randn(v, generator=g) * 0.1)
        teacher.weight.copy_(torch.randn(v, ht, generator=g) / math.sqrt(ht) * 3)
    return student, teacher


def _head_case(n: int, v: int, h: int, ht: int, seed: int, device: str = "cpu"):
    """A hidden-state problem for the engine checks: student/teacher heads (seed), student hidden
    states requiring grad (seed+1), teacher hidden states (seed+2), targets (seed+3)."""
    head, t_head = (m.to(device) for m in _heads(v, h, ht, seed))
    hidden = torch.randn(n, h, generator=_gen(seed + 1)).to(device).requires_grad_()
    t_hidden = torch.randn(n, ht, generator=_gen(seed + 2)).to(device)
    y = synthetic_targets(n, v, seed + 3).to(device)
    return head, t_head, hidden, t_hidden, y


def check_chunked_matches_dense(obj: Objective) -> CheckResult:
    """chunked_loss == dense_loss within 1e-5 (fp32): loss, stats, grads (hidden, head weight, bias)."""
    name = "chunked_matches_dense"

    def run() -> CheckResult:
        n, v, h, ht = 37, 50, 16, 24
        sched = mid_sched(obj)
        head, t_head, hidden, t_hidden, y = _head_case(n, v, h, ht, 21)
        params = [hidden, head.weight, head.bias]
        ref = dense_loss(obj, sched, head(hidden), t_head(t_hidden).detach(), y)
        ref_grads = torch.autograd.grad(ref.loss_sum, params)
        problems = []
        for chunk_size in (8, 37, 100):
            out = chunked_loss(obj, sched, hidden, head, t_hidden, t_head, y, chunk_size=chunk_size)
            grads = torch.autograd.grad(out.loss_sum, params)
            tag = f"chunk_size={chunk_size}"
            if not all_close(out.loss_sum.detach(), ref.loss_sum.detach(), 1e-5, 1e-5):
                problems.append(
                    f"{tag}: loss {float(out.loss_sum.detach()):.7g} vs dense {float(ref.loss_sum.detach()):.7g}"
                )
            if out.n_tokens != ref.n_tokens:
                problems.append(f"{tag}: n_tokens {out.n_tokens} vs {ref.n_tokens}")
            for stat in ("entropy_sum", "kl_sum"):
                a, b = getattr(out, stat), getattr(ref, stat)
                if not (math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5) or (math.isnan(a) and math.isnan(b))):
                    problems.append(f"{tag}: {stat} {a:.7g} vs dense {b:.7g}")
            for label, g, r in zip(("hidden", "head.weight", "head.bias"), grads, ref_grads):
                if not all_close(g, r, 1e-5, 1e-5):
                    problems.append(f"{tag}: grad {label} differs by {max_diff(g, r):.3g}")
        return outcome(name, problems)

    return guarded(name, run)


def check_accumulation(obj: Objective) -> CheckResult:
    """Sum of micro-batch loss_sums / total tokens == one big batch's loss_sum / tokens (and grads)."""
    name = "accumulation"

    def run() -> CheckResult:
        n, v = 24, 29
        sched = mid_sched(obj)
        s = synthetic_logits(n, v, 31).requires_grad_()
        t = synthetic_logits(n, v, 32)
        y = synthetic_targets(n, v, 33)
        full = dense_loss(obj, sched, s, t, y)
        (g_full,) = torch.autograd.grad(full.loss_sum / full.n_tokens, s)
        parts = [dense_loss(obj, sched, s[a:b], t[a:b], y[a:b]) for a, b in ((0, 10), (10, 11), (11, 24))]
        total_tokens = sum(p.n_tokens for p in parts)
        accumulated = sum(p.loss_sum for p in parts) / total_tokens
        (g_acc,) = torch.autograd.grad(accumulated, s)
        problems = []
        if total_tokens != full.n_tokens:
            problems.append(f"micro-batch token counts sum to {total_tokens}, not {full.n_tokens}")
        if not all_close(accumulated.detach(), full.loss_sum.detach() / full.n_tokens, 1e-6, 1e-7):
            problems.append(
                f"accumulated loss {float(accumulated.detach()):.7g} vs one batch {float(full.loss_sum.detach()) / n:.7g}"
            )
        if not all_close(g_acc, g_full, 1e-6, 1e-7):
            problems.append(f"gradients differ by {max_diff(g_acc, g_full):.3g}")
        return outcome(name, problems)

    return guarded(name, run)


def check_bf16(obj: Objective) -> CheckResult:
    """bf16 inputs are computed in fp32: output fp32, finite, ≥ 0 when the loss is a divergence."""
    name = "bf16"

    def run() -> CheckResult:
        problems: list[str] = []
        sched = mid_sched(obj)
        n, v = 64, 2048
        base = synthetic_logits(n, v, 41, scale=3.0)
        noise = synthetic_logits(n, v, 42, scale=1.0)
        cases = {  # nearly identical pairs are where a naive Σ p(log p − log q) dips below 0
            "identical": (base, base),
            "nearly identical": (base, base + 1e-4 * noise),
            "close": (base, base + 1e-2 * noise),
            "different": (base, synthetic_logits(n, v, 43, scale=3.0)),
        }
        y = synthetic_targets(n, v, 44)
        for label, (s32, t32) in cases.items():
            s16, t16 = s32.bfloat16().requires_grad_(), t32.bfloat16()
            loss = per_token(obj, sched, s16, t16, y)
            if loss.dtype != torch.float32:
                problems.append(f"{label}: loss dtype {loss.dtype}, expected float32")
            if not torch.isfinite(loss).all():
                problems.append(f"{label}: non-finite loss")
            if obj.nonnegative_loss and float(loss.detach().min()) < 0:
                problems.append(f"{label}: negative loss {float(loss.detach().min()):.3g}")
            (g,) = torch.autograd.grad(loss.sum(), s16)
            if g.dtype != torch.bfloat16 or not torch.isfinite(g).all():
                problems.append(f"{label}: gradient must be finite bf16, got {g.dtype}")
            # Same bf16 values in fp64: an objective that computes in bf16 internally is far off.
            loss64 = per_token(obj, sched, s16.detach().double(), t16.double(), y)
            if not all_close(loss.detach(), loss64, 1e-3, 2e-4):
                problems.append(f"{label}: fp32 result differs from fp64 by {max_diff(loss, loss64):.3g}")
        # Chunked path with a bf16 model: logits in bf16, loss in fp32.
        nh, h = 40, 32
        head, t_head = _heads(v, h, h, 45, dtype=torch.bfloat16)
        hidden = torch.randn(nh, h, generator=_gen(46)).bfloat16().requires_grad_()
        t_hidden = hidden.detach().clone() + 0.01 * torch.randn(nh, h, generator=_gen(47)).bfloat16()
        yh = synthetic_targets(nh, v, 48)
        out = chunked_loss(obj, sched, hidden, head, t_hidden, t_head, yh, chunk_size=16)
        dense = dense_loss(obj, sched, head(hidden), t_head(t_hidden).detach(), yh)
        if out.loss_sum.dtype != torch.float32 or not torch.isfinite(out.loss_sum):
            problems.append(f"chunked bf16: loss must be finite float32, got {out.loss_sum.dtype}")
        if obj.nonnegative_loss and float(out.loss_sum.detach()) < 0:
            problems.append(f"chunked bf16: negative loss {float(out.loss_sum.detach()):.3g}")
        if not all_close(out.loss_sum.detach(), dense.loss_sum.detach(), 1e-4, 1e-4):
            problems.append(
                f"chunked bf16 loss {float(out.loss_sum.detach()):.6g} vs dense {float(dense.loss_sum.detach()):.6g}"
            )
        gh, gw = torch.autograd.grad(out.loss_sum, [hidden, head.weight])
        if gh.dtype != torch.bfloat16 or gw.dtype != torch.bfloat16:
            problems.append(f"chunked bf16: grads must match parameter dtype, got {gh.dtype}, {gw.dtype}")
        if not (torch.isfinite(gh).all() and torch.isfinite(gw).all()):
            problems.append("chunked bf16: non-finite gradients")
        return outcome(name, problems)

    return guarded(name, run)


def check_reference(obj: Objective, reference: Reference | None = None) -> CheckResult:
    """Per-token loss and its gradient match autograd of the objective's plain fp64 ``reference_loss``.

    ``reference`` replaces the objective's own formula (tests use it to hold one objective against
    another's reference). An objective that declares no reference fails: an unchecked loss is not
    conformant.
    """
    name = "reference_gradient"

    def run() -> CheckResult:
        if reference is None and not obj.has_reference():
            return CheckResult(name, "fail", f"objective {obj.name!r} declares no reference formula: define "
                               "reference_loss(student_logits, teacher_logits, targets, sched, rows) on its class "
                               "with objectives.reference (see objectives/README.md)")
        ref_fn = reference or obj.reference_loss
        n, v = 12, 23
        problems = []
        for sched in (obj.schedule(0, 10), mid_sched(obj), end_sched(obj)):
            s = synthetic_logits(n, v, 51, scale=2.5, dtype=torch.float64).requires_grad_()
            t = synthetic_logits(n, v, 52, scale=2.5, dtype=torch.float64)
            y = synthetic_targets(n, v, 53)
            got = per_token(obj, sched, s, t, y)
            (g_got,) = torch.autograd.grad(got.sum(), s)
            s_ref = s.detach().clone().requires_grad_()
            # the same synthetic rows the objective's chunks got (see _with_synthetic_rows)
            rows = RowInfo(advantage=synthetic_advantage(y, s.dtype), behaviour_logprobs=synthetic_behaviour(s, y)) \
                if _needs_rows(obj) else RowInfo()
            want = ref_fn(s_ref, t, y, sched, rows)
            (g_want,) = torch.autograd.grad(want.sum(), s_ref)
            if not all_close(got, want, 1e-6, 1e-9):
                problems.append(f"sched {sched}: loss differs by {max_diff(got, want):.3g}")
            if not all_close(g_got, g_want, 1e-6, 1e-9):
                problems.append(f"sched {sched}: gradient differs by {max_diff(g_got, g_want):.3g}")
        return outcome(name, problems)

    return guarded(name, run)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def cpu_memory_profile(fn: Callable[[], Any]) -> tuple[int, int]:
    """(peak live bytes, largest single allocation) of CPU tensors while ``fn`` runs.

    Uses the torch profiler's allocation events: every allocation/free is one "[memory]" event
    with a signed byte count; replaying them in time order gives the live-bytes curve.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = largest = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
        largest = max(largest, nbytes)
    return peak, largest


def peak_memory_bytes(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """Extra peak bytes allocated by ``fn`` on ``device`` (CUDA allocator stats, or CPU profiler)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return cpu_memory_profile(fn)[0]


def check_chunked_memory(
    obj: Objective, n: int = 128, vocab: int = 4096, hidden_size: int = 32, chunk_size: int = 16
) -> CheckResult:
    """Chunked peak memory (LM head + loss + backward) is well below the dense path's (≤ 0.5×)."""
    name = "chunked_memory"

    def run() -> CheckResult:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sched = mid_sched(obj)
        head, t_head, hidden, t_hidden, y = _head_case(n, vocab, hidden_size, hidden_size, 61, device)

        def dense() -> None:
            with torch.no_grad():
                t_logits = t_head(t_hidden)
            dense_loss(obj, sched, head(hidden), t_logits, y).loss_sum.backward()

        def chunked() -> None:
            chunked_loss(obj, sched, hidden, head, t_hidden, t_head, y, chunk_size=chunk_size).loss_sum.backward()

        try:
            dense()  # warm-up (lazy init must not count)
            d_peak = peak_memory_bytes(dense, device)
            c_peak = peak_memory_bytes(chunked, device)
        except AttributeError as exc:  # profiler internals unavailable in this torch build
            return CheckResult(name, "skip", f"cannot measure CPU memory: {exc}")
        ratio = c_peak / max(d_peak, 1)
        detail = f"{device}: dense {d_peak / 2**20:.1f} MiB, chunked {c_peak / 2**20:.1f} MiB (ratio {ratio:.2f})"
        return CheckResult(name, "pass" if ratio <= 0.5 else "fail", detail)

    return guarded(name, run)


# ---------------------------------------------------------------------------------------------
# Contract v2 checks
# ---------------------------------------------------------------------------------------------
def synthetic_advantage(y: Tensor, dtype: torch.dtype) -> Tensor:
    """A deterministic per-row advantage in [-2, 2] from the target id (chunk-invariant by design)."""
    return (((y.long() * 7919) % 13).to(dtype) - 6.0) / 3.0


def synthetic_behaviour(student_logits: Tensor, y: Tensor) -> Tensor:
    """Behaviour log-probs: the detached student's log p(y) shifted by a target-dependent offset,
    so ratios to the behaviour policy differ from 1 and exercise the clip."""
    lp = torch.log_softmax(student_logits.detach().to(torch.float64), -1)[torch.arange(len(y)), y]
    return (lp + (((y.long() * 31) % 7).to(torch.float64) - 3.0) * 0.15).to(student_logits.dtype)


def _with_synthetic_rows(obj: Objective) -> Objective:
    """``obj`` whose chunks get synthetic advantage/behaviour fields when the caller gave none.

    The generic checks build chunks without row information; objectives that need it see the
    deterministic per-row values above, so chunking and accumulation checks stay meaningful.
    """
    base = type(obj)

    class WithSyntheticRows(base):  # type: ignore[misc, valid-type]
        def per_token_loss(self, chunk: LossChunk, sched: dict[str, float]) -> Tensor:
            if chunk.advantage is None:
                chunk.advantage = synthetic_advantage(chunk.targets, chunk.student_logits.dtype)
            if chunk.behaviour_logprobs is None:
                chunk.behaviour_logprobs = synthetic_behaviour(chunk.student_logits, chunk.targets)
            return super().per_token_loss(chunk, sched)

    WithSyntheticRows.__name__ = WithSyntheticRows.__qualname__ = base.__name__
    return WithSyntheticRows(obj.params)


def _needs_rows(obj: Objective) -> bool:
    return obj.uses_reward() or obj.uses_behaviour_logprobs()


def check_weight_one_identity(obj: Objective) -> CheckResult:
    """Row weight 1 everywhere is BIT-identical to no weights: loss and gradients, dense and chunked."""
    name = "weight_one_identity"

    def run() -> CheckResult:
        n, v, h, ht = 29, 41, 16, 24
        sched = mid_sched(obj)
        head, t_head, hidden, t_hidden, y = _head_case(n, v, h, ht, 61)
        ones = RowInfo(weight=torch.ones(n))
        params = [hidden, head.weight, head.bias]
        problems = []
        for label, run_fn in (
            ("dense", lambda rows: dense_loss(obj, sched, head(hidden), t_head(t_hidden).detach(), y, rows=rows)),
            ("chunked", lambda rows: chunked_loss(obj, sched, hidden, head, t_hidden, t_head, y, chunk_size=8, rows=rows)),
        ):
            a, b = run_fn(None), run_fn(ones)
            ga, gb = torch.autograd.grad(a.loss_sum, params), torch.autograd.grad(b.loss_sum, params)
            if not torch.equal(a.loss_sum.detach(), b.loss_sum.detach()):
                problems.append(f"{label}: loss {float(a.loss_sum):.9g} vs weighted {float(b.loss_sum):.9g}")
            for pname, x, z in zip(("hidden", "head.weight", "head.bias"), ga, gb):
                if not torch.equal(x, z):
                    problems.append(f"{label}: grad {pname} not bit-identical (max diff {max_diff(x, z):.3g})")
            if (a.entropy_sum, a.n_tokens) != (b.entropy_sum, b.n_tokens):
                problems.append(f"{label}: telemetry differs")
        return outcome(name, problems)

    return guarded(name, run)


def _step_rows(n_seq: int, seed: int) -> tuple[Tensor, Tensor]:
    """seq_id / segment_id of a synthetic step: sequences of uneven length with 1-3 segments each."""
    g = _gen(seed)
    seq, seg = [], []
    for i in range(n_seq):
        length = int(torch.randint(3, 11, (1,), generator=g))
        cuts = sorted(torch.randint(1, length, (2,), generator=g).tolist())
        for t in range(length):
            seq.append(i)
            seg.append(sum(t >= c for c in cuts))
    return torch.tensor(seq), torch.tensor(seg)


def check_row_weights_invariance(obj: Objective) -> CheckResult:
    """Weights from stats gathered over micro-batches/processes (any row order) equal the one-batch
    weights, and the weighted loss accumulated over micro-batches equals the one-batch loss."""
    name = "row_weights_invariance"

    def run() -> CheckResult:
        if not obj.uses_row_weights():
            return CheckResult(name, "skip", "objective uses no row weights")
        seq_id, seg_id = _step_rows(9, 71)
        n, v, h, ht = len(seq_id), 37, 16, 24
        sched = mid_sched(obj)
        head, t_head, hidden, t_hidden, y = _head_case(n, v, h, ht, 72)
        t_hidden = t_hidden * 2
        rows = RowInfo(seq_id=seq_id, segment_id=seg_id)
        problems = []
        whole = row_token_stats(obj, sched, hidden, head, t_hidden, t_head, y, chunk_size=n, rows=rows)
        w_whole = obj.row_weights({k: x for k, x in whole.items() if k != BEHAVIOUR_STAT}, seq_id, seg_id)
        if not isinstance(w_whole, Tensor) or w_whole.shape != (n,) or not bool(torch.isfinite(w_whole).all()) \
                or bool((w_whole < 0).any()):
            return outcome(name, [f"row_weights must return [{n}] finite weights >= 0"])
        # micro-batches as a stage would cut them (one per 3 sequences), chunked differently
        parts = [torch.nonzero((seq_id // 3) == k).flatten() for k in range(3)]
        pieces = [row_token_stats(obj, sched, hidden[ix], head, t_hidden[ix], t_head, y[ix], chunk_size=5,
                                  rows=rows.select(ix)) for ix in parts]
        order = torch.cat(parts)
        gathered = {k: torch.cat([p[k] for p in pieces]) for k in whole}
        for k in whole:
            if not torch.allclose(gathered[k].double(), whole[k][order].double(), rtol=1e-5, atol=1e-6):
                problems.append(f"token_stats[{k!r}] depends on chunking/micro-batching")
        # "processes" deliver rows in another order: weights must follow the rows, not positions
        perm = torch.randperm(n, generator=_gen(76))
        w_perm = obj.row_weights({k: x[perm] for k, x in whole.items() if k != BEHAVIOUR_STAT}, seq_id[perm], seg_id[perm])
        if not torch.allclose(w_perm.double(), w_whole[perm].double(), rtol=1e-5, atol=1e-6):
            problems.append("row_weights depend on the order of rows (use seq_id/segment_id, not positions)")
        w_parts = obj.row_weights({k: x for k, x in gathered.items() if k != BEHAVIOUR_STAT}, seq_id[order], seg_id[order])
        full = chunked_loss(obj, sched, hidden, head, t_hidden, t_head, y, chunk_size=7,
                            rows=RowInfo(seq_id=seq_id, segment_id=seg_id, weight=w_whole))
        (g_full,) = torch.autograd.grad(full.loss_sum, hidden)
        acc = torch.zeros(())
        start = 0
        for ix in parts:
            w = w_parts[start : start + len(ix)]
            start += len(ix)
            acc = acc + chunked_loss(obj, sched, hidden[ix], head, t_hidden[ix], t_head, y[ix], chunk_size=4,
                                     rows=RowInfo(seq_id=seq_id[ix], segment_id=seg_id[ix], weight=w)).loss_sum
        (g_acc,) = torch.autograd.grad(acc, hidden)
        if not all_close(acc.detach(), full.loss_sum.detach(), 1e-5, 1e-6):
            problems.append(f"accumulated weighted loss {float(acc):.7g} vs one batch {float(full.loss_sum):.7g}")
        if not all_close(g_acc, g_full, 1e-5, 1e-6):
            problems.append(f"weighted gradients differ by {max_diff(g_acc, g_full):.3g}")
        zero = w_whole == 0
        if bool(zero.any()) and float(g_full[zero].abs().max()) != 0.0:
            problems.append("rows of weight 0 received a gradient")
        return outcome(name, problems, f"{int(zero.sum())}/{n} rows weight 0")

    return guarded(name, run)


def check_rows_reach(obj: Objective) -> CheckResult:
    """Advantages and behaviour log-probs reach their own rows: changing row i's value changes only
    row i's loss, and permuting rows permutes the losses."""
    name = "rows_reach"

    def run() -> CheckResult:
        if not _needs_rows(obj):
            return CheckResult(name, "skip", "objective uses no advantages or behaviour log-probs")
        n, v = 10, 19
        sched = mid_sched(obj)
        s = synthetic_logits(n, v, 81, dtype=torch.float64)
        t = synthetic_logits(n, v, 82, dtype=torch.float64)
        y = synthetic_targets(n, v, 83)
        adv = synthetic_advantage(y, torch.float64) + 0.5
        beh = synthetic_behaviour(s, y)

        def loss(sl, tl, yy, a, b):
            rows = RowInfo(advantage=a, behaviour_logprobs=b, seq_id=torch.arange(len(yy)))
            return obj.per_token_loss(make_loss_chunk(obj, sl, tl, yy, rows=rows), sched).detach()

        base = loss(s, t, y, adv, beh)
        problems = []
        for field in ("advantage", "behaviour"):
            a2, b2 = adv.clone(), beh.clone()
            if field == "advantage":
                a2[3] = a2[3] + 1.7
            else:
                b2[3] = b2[3] - 0.9
            changed = (loss(s, t, y, a2, b2) - base).abs() > 1e-12
            # a behaviour change may leave a row's loss unchanged (a clipped ratio), never another row's
            others = changed.clone()
            others[3] = False
            if bool(others.any()) or (field == "advantage" and not bool(changed[3])):
                problems.append(f"changing row 3's {field} changed rows {torch.nonzero(changed).flatten().tolist()}")
        perm = torch.randperm(n, generator=_gen(84))
        if not torch.allclose(loss(s[perm], t[perm], y[perm], adv[perm], beh[perm]), base[perm], rtol=1e-12, atol=1e-12):
            problems.append("permuting rows does not permute the per-row losses")
        return outcome(name, problems)

    return guarded(name, run)


@dataclass
class _KitExample:
    id: str = "kit-0"
    prompt: str = "What is 2 + 3?"
    response: str = "2 + 3 = 5\n#### 5"
    answer: str | None = "5"
    references: list = None  # type: ignore[assignment]
    fields: dict = None  # type: ignore[assignment]
    meta: dict = None  # type: ignore[assignment]


def check_teacher_prompt(obj: Objective) -> CheckResult:
    """``teacher_prompt`` returns text for the teacher's prompt only: a string that keeps the
    student's question, differs from it, and leaves the example unchanged (the stage pairs it with
    the student's own completion tokens; that alignment is tested with a tokenizer in the stage)."""
    name = "teacher_prompt"

    def run() -> CheckResult:
        if type(obj).teacher_prompt is Objective.teacher_prompt:
            return CheckResult(name, "skip", "objective keeps the student's prompt for the teacher")
        ex = _KitExample()
        before = dict(vars(ex))
        text = obj.teacher_prompt(ex)
        problems = []
        if not isinstance(text, str):
            problems.append(f"teacher_prompt must return a str, got {type(text).__name__}")
        else:
            if ex.prompt not in text:
                problems.append("the teacher's prompt lost the student's question")
            if text == ex.prompt:
                problems.append("the teacher's prompt equals the student's")
        if vars(ex) != before:
            problems.append("teacher_prompt modified the example")
        return outcome(name, problems)

    return guarded(name, run)


def _v2_checks(obj: Objective) -> list[Callable[[Objective], CheckResult]]:
    return [check_weight_one_identity, check_row_weights_invariance, check_rows_reach, check_teacher_prompt]


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def _resolve(objective: type[Objective] | Objective | str, params: Mapping[str, Any] | None) -> Objective:
    if isinstance(objective, Objective):
        if params is not None:
            raise ObjectiveError("pass params with an objective class or name, not with an instance")
        return objective
    cls = get_objective(objective) if isinstance(objective, str) else objective
    return cls(params)


def _no_reference_argument(reference: Any) -> None:
    if reference is not None:
        raise ObjectiveError("assert_conformant/run_conformance no longer take reference=: define the formula as "
                             "reference_loss(student_logits, teacher_logits, targets, sched, rows) on the objective's "
                             "class (see objectives/README.md), so every run of the kit checks it")


def run_conformance(
    objective: type[Objective] | Objective | str,
    params: Mapping[str, Any] | None = None,
    *,
    memory: bool = True,
    reference: Any = None,
) -> list[CheckResult]:
    """Run every applicable check on ``objective`` (class, registered name or instance): the generic
    ones, then the objective's own ``conformance_checks()``."""
    _no_reference_argument(reference)
    obj = _resolve(objective, params)
    if _needs_rows(obj):
        obj = _with_synthetic_rows(obj)
    checks: list[Callable[[Objective], CheckResult]] = [
        check_contract,
        check_zero_at_match,
        check_direction,
        check_chunked_matches_dense,
        check_accumulation,
        check_bf16,
        check_reference,
    ]
    if memory:
        checks.append(check_chunked_memory)
    checks.extend(_v2_checks(obj))
    checks.extend(obj.conformance_checks())
    with single_threaded():
        return [check(obj) for check in checks]


def assert_conformant(
    objective: type[Objective] | Objective | str,
    params: Mapping[str, Any] | None = None,
    *,
    memory: bool = True,
    reference: Any = None,
) -> list[CheckResult]:
    """``run_conformance`` and raise ``AssertionError`` listing every failed check."""
    _no_reference_argument(reference)
    results = run_conformance(objective, params, memory=memory)
    failed = [r for r in results if r.failed]
    if failed:
        raise AssertionError("objective is not conformant:\n" + "\n".join(str(r) for r in failed))
    return results
