"""The MoE layer's dispatch: the ``tokens * k`` (token, slot) pairs sorted by expert into block-padded segments
(three launches: count, scan, scatter; the kernels in ``kernel.py``). Used by ``api.py``'s forward and tests."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from ... import _runtime as rt
from .kernel import MAX_EXPERTS, dispatch_count, dispatch_scan, dispatch_scatter


class Dispatch(NamedTuple):
    """The expert-sorted, block-padded layout of the ``tokens * k`` pairs (pair ``p = t*k + j``), all int32.

    sorted_pairs: (num_blocks * block_m,) row -> pair; -1 on padding rows; rows >= offsets[E] are never
        written nor read.
    pair_rows: (tokens * k,) pair -> row, the inverse permutation.
    counts: (E,) pairs per expert.  offsets: (E + 1,) first row of each expert (multiples of block_m),
        offsets[E] = rows in use.
    block_m: the padding granularity.  num_blocks: the grid bound, tokens*k // block_m + min(E, tokens*k).
    """

    sorted_pairs: torch.Tensor
    pair_rows: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    block_m: int
    num_blocks: int


def _pow2_at_least(n: int, floor: int = 1) -> int:
    return max(triton.next_power_of_2(n), floor)


def moe_dispatch(expert_ids: torch.Tensor, num_experts: int, block_m: int) -> Dispatch:
    """Sort the pairs of ``expert_ids: (tokens, k)`` by expert (stable) into ``block_m``-padded expert segments.

    Three launches, no host synchronisation: the grid and every buffer size follow from the shapes alone.
    """
    if expert_ids.dim() != 2 or expert_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"expert_ids must be a (tokens, k) int32/int64 tensor, got {expert_ids.dtype} "
                         f"{tuple(expert_ids.shape)}")
    if not 1 <= num_experts <= MAX_EXPERTS:
        raise ValueError(f"num_experts must be in [1, {MAX_EXPERTS}], got {num_experts}")
    if block_m < 1 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two, got {block_m}")
    n_tokens, top_k = expert_ids.shape
    n_pairs = n_tokens * top_k
    device = expert_ids.device
    num_blocks = n_pairs // block_m + min(num_experts, n_pairs)
    block_e = _pow2_at_least(num_experts, 16)
    block_t = min(max(8192 // block_e, 16), 128)  # tokens per count/scatter tile: a (BLOCK_T, BLOCK_E) one-hot
    n_tiles = triton.cdiv(n_tokens, block_t)

    sorted_pairs = rt.empty((num_blocks * block_m,), torch.int32, device)
    pair_rows = rt.empty((n_pairs,), torch.int32, device)
    counts = rt.empty((num_experts,), torch.int32, device)
    offsets = rt.empty((num_experts + 1,), torch.int32, device)
    hist = rt.empty((max(n_tiles, 1), num_experts), torch.int32, device)
    prefix = rt.empty((max(n_tiles, 1), num_experts), torch.int32, device)
    rank = rt.empty((n_pairs,), torch.int32, device)
    if n_tiles:
        dispatch_count[(n_tiles,)](expert_ids, hist, rank, n_tokens, num_experts, top_k,
                                   expert_ids.stride(0), expert_ids.stride(1), BLOCK_T=block_t, BLOCK_E=block_e)
    dispatch_scan[(1,)](hist, prefix, counts, offsets, sorted_pairs, n_tiles, num_experts,
                        BLOCK_M=block_m, BLOCK_B=4096 // block_e, BLOCK_E=block_e,
                        BLOCK_P=min(block_m, 4096 // block_e))
    if n_tiles:
        dispatch_scatter[(n_tiles,)](expert_ids, rank, prefix, offsets, sorted_pairs, pair_rows,
                                     n_tokens, num_experts, top_k, expert_ids.stride(0), expert_ids.stride(1),
                                     BLOCK_T=block_t, BLOCK_K=_pow2_at_least(top_k))
    return Dispatch(sorted_pairs, pair_rows, counts, offsets, block_m, num_blocks)
