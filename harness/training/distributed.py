"""Data parallelism through Accelerate's process state, with explicit gradient all-reduce.

Each process computes the loss sum over its share of the global batch divided by the GLOBAL loss
token count; summing gradients over processes then gives exactly the gradient of one big batch,
independent of process count and accumulation steps. (DDP would average, and would need the loss
to go through the wrapped module's forward; our loss applies the LM head outside the trunk.)
FSDP / DeepSpeed ZeRO for students too large for one device: see README "Scaling out".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


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
        """Sum gradients over processes in one flat buffer (one collective per optimizer step)."""
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

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(force_cpu: bool = False) -> DistContext:
    """Single process unless launched by `accelerate launch` / `torchrun` (WORLD_SIZE > 1)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and not force_cpu
    if world > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not use_cuda)
        return DistContext(rank=state.process_index, world_size=state.num_processes, device=state.device)
    device = torch.device("cuda") if use_cuda else torch.device("cpu")
    return DistContext(rank=0, world_size=1, device=device)
