"""Summing an epoch of recorded rows across torch.distributed ranks: one SUM and one MAX collective."""
from __future__ import annotations

import torch

__all__ = ["is_distributed", "is_main_process", "all_reduce"]


def is_distributed() -> bool:
    "Whether torch.distributed runs with more than one rank."
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    "Rank 0, or not distributed: the process that holds the global recording and writes files."
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce(sums: list, maxima: list, device) -> None:
    "Sum the tensors of `sums` and take the max of those of `maxima` across ranks, in place."
    dist = torch.distributed
    for tensors, op in ((sums, dist.ReduceOp.SUM), (maxima, dist.ReduceOp.MAX)):
        if not tensors:
            continue
        # One flat float64 buffer for all layers (counts stay exact below 2**53).
        flat = torch.cat([tensor.reshape(-1).to(device=device, dtype=torch.float64) for tensor in tensors])
        dist.all_reduce(flat, op=op)
        for tensor, reduced in zip(tensors, flat.split([tensor.numel() for tensor in tensors])):
            tensor.copy_(reduced.view(tensor.shape))


def check_same_columns(used: int, device) -> None:
    "Every rank must have recorded as many columns (batches) this epoch: else the sums would not line up."
    dist = torch.distributed
    counts = torch.tensor([used, -used], dtype=torch.float64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    if counts[0].item() != used or -counts[1].item() != used:
        raise RuntimeError(f"colordim: ranks recorded between {int(-counts[1].item())} and "
                           f"{int(counts[0].item())} batches this epoch; each rank must run the same number of "
                           "batches (use a DistributedSampler, drop_last=True)")
