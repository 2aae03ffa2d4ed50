"""The MoE layer's peer, for the sweeps (``spec.py``'s ``peers``). Ours: router, top-k, gather, gate/up GEMM,
SwiGLU, down GEMM, weighted sum. Liger's ``fused_moe`` (``LigerFusedMoEFunction``) is everything after the top-k;
the router GEMM, softmax and top-k are torch, as in our reference. Same weight layouts (gate_up (E, 2I, H), gate
first; down (E, H, I)). Liger's MoE kernels are pinned to one config without a GPU (``kernels/peer_libs.py``).
Also here: what the counters need to count Liger's kernels (``OpSpec.count_exact``, ``count_outputs``,
``count_strata``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...peer_libs import module
from ...spec import idle_apart, plateau_and_rest

DESCRIPTIONS = {
    "moe": {"liger": "Liger fused_moe (LigerFusedMoEFunction) after a torch router (linear, softmax, top-k)"},
}

# Liger's routing kernels: later launches read their outputs, so the counters run them whole (OpSpec.count_exact),
# or, the scatter (too slow to run whole under the interpreter), sampled and its outputs written (count_outputs).
LIGER_MOE_EXACT = ("_moe_router_histogram_kernel", "_moe_router_prefix_sum_kernel")


def _liger_scatter_outputs(s_scatter_idx_ptr, s_reverse_scatter_idx_ptr, x_gather_idx_ptr, tile_row_start_ptr,
                           tile_expert_ptr, topk_indices_ptr, expert_offs_ptr, K, BLOCK_M_TOKEN, **_):
    """What Liger's ``_moe_router_scatter_kernel`` writes over its whole grid, for the counters (its programs
    each sort one tile of 1024 (token, k) pairs: equal work, so a sample counts it; the interpreter takes ~15 s a
    program over its bitonic network): the pairs stably sorted by expert (the kernel orders each expert's pairs by
    their flat index), the inverse permutation, each pair's token, and each expert's tiles of BLOCK_M_TOKEN rows."""
    flat = topk_indices_ptr.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    s_scatter_idx_ptr.copy_(order.to(torch.int32))
    s_reverse_scatter_idx_ptr[order] = torch.arange(flat.numel(), dtype=torch.int32, device=flat.device)
    x_gather_idx_ptr.copy_((order // K).to(torch.int32))
    per_expert = torch.bincount(flat, minlength=expert_offs_ptr.numel())
    tiles = (per_expert + BLOCK_M_TOKEN - 1) // BLOCK_M_TOKEN
    expert = torch.repeat_interleave(torch.arange(tiles.numel(), device=flat.device), tiles)
    first = torch.repeat_interleave(torch.cumsum(tiles, 0) - tiles, tiles)
    row = torch.arange(expert.numel(), device=flat.device) - first
    tile_row_start_ptr.copy_((expert_offs_ptr.long()[expert] + row * BLOCK_M_TOKEN).to(torch.int32))
    tile_expert_ptr.copy_(expert.to(torch.int32))


LIGER_MOE_OUTPUTS = {"_moe_router_scatter_kernel": _liger_scatter_outputs}


def _liger_tile_strata(grid, *, tile_row_start_ptr, tile_expert_ptr, expert_start_ptr, BLOCK_M, **_):
    """Liger's grouped GEMMs' programs (grid: M-tiles fastest, then N-tiles) by whether their M-tile is full or
    its expert's last, partly filled one (in order of its rows), for the counters (``OpSpec.count_strata``): the
    routing decides which."""
    import numpy as np

    ends = expert_start_ptr.numpy().astype(np.int64)[tile_expert_ptr.numpy().astype(np.int64) + 1]
    pid = np.arange(math.prod(grid))
    rows = np.minimum(ends - tile_row_start_ptr.numpy().astype(np.int64), BLOCK_M)[pid % grid[0]]
    return plateau_and_rest(pid, rows, top=BLOCK_M)


def _liger_expert_strata(grid, *, expert_start_ptr, **_):
    """Liger's weight gradients (grid: ``E * m_tiles`` fastest, then N-tiles): a program loops over its expert's
    rows. The programs of empty experts apart (at hot=8, 7 in 8: a mirrored pair of an empty and a busy one would
    count half the grid busy, twice the truth), the busiest apart, and the rest in order of their rows, so the
    counters' mirrored pairs match a light expert with a heavy one (as ours, ``spec._group_strata``)."""
    import numpy as np

    starts = expert_start_ptr.numpy().astype(np.int64)
    pid = np.arange(math.prod(grid))
    rows = np.diff(starts)[pid % grid[0] // (grid[0] // (len(starts) - 1))]
    return idle_apart(pid, rows)


LIGER_MOE_STRATA = {**dict.fromkeys(("_fused_up_proj_swiglu_kernel", "_fused_down_proj_kernel",
                                     "_moe_bwd_down_proj_kernel", "_moe_bwd_dX_expanded_kernel"), _liger_tile_strata),
                    **dict.fromkeys(("_moe_bwd_dW1_kernel", "_moe_bwd_dW2_kernel"), _liger_expert_strata)}


def liger_moe():
    mod = module("liger_kernel.ops.fused_moe")
    if mod is None:
        return None

    def liger_moe(x, router_weight, gate_up, down, *, k=8, normalize=False):
        shape, hidden = x.shape, x.shape[-1]
        h = x.reshape(-1, hidden)
        probs = torch.softmax(F.linear(h, router_weight), dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, k, dim=-1)
        if normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = mod.LigerFusedMoEFunction.apply(h, gate_up, down, ids.to(torch.int32), weights.to(x.dtype))
        return out.reshape(shape)

    return liger_moe
