"""Sharded training (`train.sharding: fsdp`): each rank holds 1/world of the student's parameters,
gradients and AdamW moments, so a model whose full fine-tuning does not fit one device (a 7B
teacher prepared with full `sft`) trains across several.

Built on torch's FSDP2 (`torch.distributed.fsdp.fully_shard`), the same implementation Accelerate
uses underneath for FSDP on GPUs. It is used directly because Accelerate silently replaces FSDP by
DDP on CPU (MULTI_CPU), which would leave the sharded path untestable without GPUs; torch's own
FSDP2 runs on CPU with gloo, so the 2-process CPU test exercises the exact code a GPU run uses.

Scope, checked before any model is loaded (`check_sharding`):
- only objectives that train on ground-truth or teacher sequences (no student rollouts): sampling
  from a sharded model would all-gather every layer per decoded token on every rank;
- more than one process (one process has nothing to shard over).

Resume checkpoints follow the unsharded policy (interval, Ctrl-C) but each rank writes and reads
only its own shard of weights and AdamW moments (`sharded_checkpoint.py`, torch.distributed.checkpoint);
a rerun resumes, with the same or another process count. The final model is gathered to rank 0
and written as a normal HF checkpoint, which supersedes the resume checkpoint.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from harness.training.distributed import DistContext, LossPositionsModule

SHARDING_FIELD = "train.sharding"


def check_sharding(sharding: str, needs: Any, world_size: int, *, contract_v2: bool = False,
                   field: str = SHARDING_FIELD) -> None:
    """Refuse an FSDP run that cannot work, naming the field and the fix (before any model load)."""
    if sharding != "fsdp":
        return
    if contract_v2:  # the v2 rows path calls the student outside the sharded root module
        raise ValueError(f"{field}: fsdp does not support contract-v2 objectives yet; set {field}: none")
    if needs.student_rollouts:
        raise ValueError(f"{field}: fsdp supports objectives trained on ground-truth or teacher sequences only "
                         "(sft, supervised_kd, ...); this objective samples from the student. Use "
                         f"{field}: none (one full copy per process) or LoRA")
    if world_size < 2:
        raise ValueError(f"{field}: fsdp shards over processes but this run has {world_size}; launch with "
                         "`torchrun --nproc_per_node N distill-bench ...` (N >= 2) or set "
                         f"{field}: none")


class ShardedStudent:
    """The student sharded with FSDP2; same interface as `DataParallelStudent`.

    Decoder layers are sharded as units (one all-gather per layer, freed after use); the root unit is
    the whole `LossPositionsModule`, so embeddings, final norm and LM head (tied on SmolLM2/Qwen2)
    are one group. FSDP2 keeps the root unit gathered from its forward until its backward, which is
    why the loop may apply the LM head OUTSIDE the forward: the head weight read there is the
    gathered one, and its gradient is reduce-scattered with the root group at the end of backward.

    Gradients: the loop divides each rank's loss sum by the GLOBAL token count and expects the
    ranks' gradients SUMMED. FSDP2 averages; dividing by 1 instead needs PREMUL_SUM, which gloo lacks,
    so the loss is multiplied by the world size (`loss_scale`) and FSDP's average becomes the sum.
    """

    def __init__(self, student: nn.Module, ctx: DistContext, forward_fn: Callable, *, bf16: bool):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.ctx = ctx
        self.loss_scale = float(ctx.world_size)
        self.module = LossPositionsModule(student, forward_fn)
        # bf16 compute and all-gathers, fp32 master weights and gradient reduction.
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
        layers = decoder_layers(student)
        for layer in layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(self.module, mp_policy=mp)  # moves the shards (and buffers) onto this rank's device
        self.full_numel = sum(p.numel() for p in student.parameters())
        self.local_numel = sum(p.to_local().numel() for p in student.parameters())

    def hidden_states(self, batch, autocast_dtype=None) -> torch.Tensor:
        return self.module(batch, autocast_dtype)

    def micro_batch(self, final: bool):
        # Reduce-scatter only on the last micro-batch; earlier ones accumulate unsharded gradients.
        self.module.set_requires_gradient_sync(final)
        return contextlib.nullcontext()

    def layout(self) -> dict[str, Any]:
        """Parameter counts: the full model and what each rank holds (recorded in the summary)."""
        import torch.distributed as dist

        per_rank: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(per_rank, self.local_numel)
        return {"sharding": "fsdp", "full_params": self.full_numel, "local_params_per_rank": per_rank}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) weights on CPU, on rank 0 ({} elsewhere). Collective: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = self.module.model
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # A tied parameter appears under every name (embed_tokens and lm_head); HF checkpoints store it
        # once, under the name `named_parameters()` keeps, exactly as an unsharded save does.
        kept = {n for n, _ in model.named_parameters()}
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - kept
        return {k: v for k, v in sd.items() if k not in aliases} if self.ctx.is_main else {}


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a HF causal LM (`model.model.layers` for Llama/Qwen2/SmolLM2)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"train.sharding: fsdp does not know where the decoder layers of {type(model).__name__} are "
                         "(expected model.model.layers); use train.sharding: none")
    return list(layers)


def grad_norm_value(norm: torch.Tensor) -> float:
    """`clip_grad_norm_` over DTensor gradients returns a DTensor; its value is the global norm."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
