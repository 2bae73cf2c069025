"""torch.distributed set-up for `torchrun --nproc_per_node N -m pokediff train ...`.

Data parallelism with an exact single-process equivalent: every rank draws the same *global* batch
(indices, flips, timesteps, noise) from identically seeded generators and keeps its own slice. The
loss is the mean over the local slice, DDP averages gradients over ranks, so the update equals the
single-process update on the global batch (up to float summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistInfo()


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun described in the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE_PROCESS
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def shard(batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous slice of a global batch along dim 0."""
    if not info.enabled:
        return batch
    per_rank = batch.shape[0] // info.world_size
    return batch[info.rank * per_rank:(info.rank + 1) * per_rank]


def mean_across_ranks(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.AVG if x.device.type == "cuda" else dist.ReduceOp.SUM)
        if x.device.type != "cuda":  # gloo has no AVG
            x /= info.world_size
    return x


def max_across_ranks(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest of every rank's ``value`` (one small all-reduce, a host sync); ``value`` alone without
    a process group."""
    if not info.enabled:
        return value
    x = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return int(x.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_across_ranks(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-reduce; no-op for one process)."""
    if not info.enabled:
        return flag
    x = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return bool(x.item())
