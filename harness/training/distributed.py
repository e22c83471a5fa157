"""Data parallelism: one process per device, gradients synchronized by PyTorch DDP.

`init_distributed()` must run before any model is loaded: it creates the process group (through
Accelerate's process state, so `torchrun` and `accelerate launch` both work) and pins this rank to
its own device (`cuda:LOCAL_RANK`), so no rank ever allocates on another rank's GPU.

Each process computes the loss sum over its share of the global batch divided by the GLOBAL loss
token count; SUMMING gradients over processes then gives exactly the gradient of one big batch,
independent of process count and accumulation steps. DDP averages by default, so its communication
hook is replaced by a plain all-reduce sum. DDP buckets the gradients and starts reducing a bucket
while backward is still computing earlier layers, and skips communication on non-final micro-batches
(`no_sync`); the loss applies the LM head outside the wrapped forward, which DDP allows (its hooks sit
on the parameters, not on the forward's outputs).
Models whose full fine-tuning does not fit one device: `train.sharding: fsdp` (harness/training/sharding.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, value: float | int) -> float:
        if self.world_size == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients over processes in one flat buffer, after backward (no overlap). Only for
        paths that run the student outside DDP's forward (contract-v2 objectives); v1 uses DDP."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads]).to(self._comm_device())
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.to(params[0].device)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(g).to(g.dtype).clone()
            offset += n

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one (decisions that need all ranks)."""
        return self.all_reduce_sum(1.0 if flag else 0.0) > 0

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (e.g. which cells are still to do)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, indexed by rank, on every rank (an evaluation's shares, `harness.ranks`)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


class LossPositionsModule(nn.Module):
    """The student as one module whose forward returns hidden states at a batch's loss positions.

    DDP wraps this (it needs a forward to arm its gradient hooks); `forward_fn` is
    `harness.training.forward.loss_hidden_states`, passed in so this module does not own the forward.
    """

    def __init__(self, model: nn.Module, forward_fn: Callable):
        super().__init__()
        self.model = model
        self._forward_fn = forward_fn

    def forward(self, batch, autocast_dtype=None):  # noqa: D401 - nn.Module API
        return self._forward_fn(self.model, batch, autocast_dtype)


class DataParallelStudent:
    """The student's forward and gradient synchronization for one training run.

    world_size 1: a plain call, no wrapper. Otherwise DDP with a summing hook; `micro_batch(final)`
    is the context a micro-batch's forward AND backward run in (no communication unless `final`).
    """

    def __init__(self, student: nn.Module, ctx: DistContext, forward_fn: Callable, *, static_graph: bool = False):
        self.ctx = ctx
        self.module = LossPositionsModule(student, forward_fn)
        self.ddp = None
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # device_ids=None: the batch is already on this rank's device (no input scatter);
            # buffers (rotary tables) are identical on every rank, so they are not re-broadcast.
            self.ddp = DistributedDataParallel(self.module, device_ids=None, broadcast_buffers=False,
                                               static_graph=static_graph)
            self.ddp.register_comm_hook(None, allreduce_sum_hook)

    def hidden_states(self, batch, autocast_dtype=None) -> torch.Tensor:
        return (self.ddp or self.module)(batch, autocast_dtype)

    def micro_batch(self, final: bool):
        if self.ddp is None or final:
            return contextlib.nullcontext()
        return self.ddp.no_sync()


def allreduce_sum_hook(process_group, bucket):
    """DDP communication hook: SUM the bucket over ranks (DDP's default divides by world size)."""
    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def rank_device(local_rank: int, use_cuda: bool, cuda_count: int) -> torch.device:
    """This rank's device: its own GPU (`cuda:LOCAL_RANK`), or the CPU.

    More processes per node than GPUs would put two ranks on one GPU (each with a full copy of both
    models): refused with the fix, rather than silently sharing.
    """
    if not use_cuda:
        return torch.device("cpu")
    if local_rank >= cuda_count:
        raise RuntimeError(
            f"process with LOCAL_RANK {local_rank} has no GPU of its own ({cuda_count} visible): launch at most "
            f"{cuda_count} processes per node (torchrun --nproc_per_node {cuda_count}) or set CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank)


_CONTEXT: DistContext | None = None


def init_distributed(force_cpu: bool = False) -> DistContext:
    """The process group and this rank's device; single process unless launched by `torchrun` /
    `accelerate launch` (WORLD_SIZE > 1). Idempotent: the first call decides, later calls reuse it,
    so call it before loading any model."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not force_cpu
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(local_rank, use_cuda, torch.cuda.device_count() if use_cuda else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the process group: NCCL binds to the current device
    if world > 1:
        from accelerate import PartialState

        from datetime import timedelta

        # Ranks wait at barriers while rank 0 alone writes results (an evaluation, a report): far
        # longer than the 10-30 min default collective timeout at paper scale.
        state = PartialState(cpu=not use_cuda, timeout=timedelta(hours=6))
        ctx = DistContext(rank=state.process_index, world_size=state.num_processes, device=device)
    else:
        ctx = DistContext(rank=0, world_size=1, device=device)
    _CONTEXT = ctx
    return ctx
