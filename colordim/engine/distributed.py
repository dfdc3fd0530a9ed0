"""Every collective: summing an epoch of recorded rows across torch.distributed ranks (one SUM and one
MAX collective), and checking that the ranks recorded the same columns."""
from __future__ import annotations

import numpy as np
import torch

from ..data.layout import CHANNELS, DEAD, EXTREMES, NUMEL, SUMS

__all__ = ["is_distributed", "is_main_process", "all_reduce", "check_same_columns", "reduce_rows", "agree_grids"]


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


def reduce_rows(buffers: list, sizes: np.ndarray, used: int, unit_maxima: bool, device) -> np.ndarray:
    """Sum the first `used` rows of every layer's buffer across ranks (counts, the sums, the host's
    `sizes` (used, layers, SIZES)), take the max of the extremes and (`unit_maxima`) of each unit's
    maximum; returns the summed sizes. Every rank calls this at the same flush with the same layers."""
    if unit_maxima:  # every rank's unit maxima must be as wide before they are merged
        widths = torch.tensor([0 if buffer.unit_max is None else buffer.unit_max.shape[1] for buffer in buffers],
                              dtype=torch.float64, device=device)
        all_reduce([], [widths], device)
        for buffer, width in zip(buffers, widths.tolist()):
            buffer.widen(int(width))
    summed = torch.from_numpy(sizes).to(device)
    maxima = [buffer.moments[:used, EXTREMES] for buffer in buffers]
    maxima += [buffer.unit_max[:used] for buffer in buffers] if unit_maxima else []
    all_reduce([buffer.counts[:used] for buffer in buffers] + [buffer.moments[:used, SUMS] for buffer in buffers]
               + [summed], maxima, device)
    summed = summed.cpu().numpy()
    if unit_maxima:  # dead = <= 0 on every rank: count over the merged maxima, over each unit once
        for layer, buffer in enumerate(buffers):
            ran = summed[:, layer, NUMEL] > 0
            dead = (buffer.unit_max[:used] <= 0).sum(1).to(buffer.moments.dtype)
            buffer.moments[:used, DEAD] = dead * torch.from_numpy(ran).to(device)
            summed[:, layer, CHANNELS] = np.where(ran, buffer.unit_max.shape[1], 0)
    return summed


def agree_grids(grids: list, device) -> list:
    """Per auto layer, the narrowest grid (`colordim.engine.ranges`: (exponent, bins below zero)) that holds every
    rank's (None: no rank has one yet). Symmetric if any rank's is; a one-sided one then needs one doubling."""
    below = torch.tensor([grid[1] if grid else 0 for grid in grids], dtype=torch.float64, device=device)
    all_reduce([], [below], device)
    exponent = torch.tensor([grid[0] + (1 if bottom and not grid[1] else 0) if grid else -1e9
                             for grid, bottom in zip(grids, below.tolist())], dtype=torch.float64, device=device)
    all_reduce([], [exponent], device)
    return [None if e < -1e8 else (int(e), int(b)) for e, b in zip(exponent.tolist(), below.tolist())]
