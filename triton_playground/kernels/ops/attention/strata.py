"""Attention's counting strata (``OpSpec.count_strata``): its programs, and FLA's, grouped by the work causal
windowed attention gives each, so the counters sample each group on its own."""

from __future__ import annotations

from ...spec import plateau_and_rest


def _ramp_and_plateau(pid, block, M, N, W, resident_rows, streamed_rows, resident="queries"):
    """Causal windowed attention's programs (``block``: each one's resident block) for the counters
    (``OpSpec.count_strata``): the blocks a program streams (key blocks for a query block, as ``blocks.key_range``
    bounds them; query blocks for a key block in dK/dV) ramp up over the first window (down over the last, in
    dK/dV), then stay flat: the plateau, and the ramp in order of its walks (``plateau_and_rest``)."""
    import numpy as np

    offset = N - M  # query row i sits at key position offset + i (bottom-right aligned)
    if resident == "queries":  # its rows i see keys (offset + i - W, offset + i]
        first, last = offset + block * resident_rows, offset + np.minimum((block + 1) * resident_rows, M) - 1
        count = -(-np.minimum(last + 1, N) // streamed_rows) - np.maximum(first - W + 1, 0) // streamed_rows
    else:  # its keys j are seen by the queries i with offset + i in [j, j + W)
        first, last = block * resident_rows - offset, np.minimum((block + 1) * resident_rows, N) - 1 - offset
        count = -(-np.clip(last + W, 0, M) // streamed_rows) - np.clip(first, 0, M) // streamed_rows
    return plateau_and_rest(pid, count)


def _strata(resident):
    """Ours: a causal walk without a window is affine in the block (pairs are exact): one stratum; so are packed
    and split launches."""
    import numpy as np

    def strata(grid, *, M, N, W, CAUSAL, WINDOWED, VARLEN, BLOCK_M, BLOCK_N, SPLIT=False, **_):
        pid = np.arange(int(np.prod(grid)))
        if not (CAUSAL and WINDOWED) or VARLEN or SPLIT:
            return [pid]
        rows = (BLOCK_M, BLOCK_N) if resident == "queries" else (BLOCK_N, BLOCK_M)
        return _ramp_and_plateau(pid, pid % grid[0], M, N, W, *rows, resident)

    return strata


def _fla_strata(resident):
    """FLA's ``parallel_attn`` kernels (grid: value tiles fastest, then ``BT``-row blocks; then batch x heads),
    always causal: windowed, as ours."""
    import numpy as np

    def strata(grid, *, T, W, BT, BS, V, BV, IS_VARLEN=False, **_):
        pid = np.arange(int(np.prod(grid)))
        if W is None or IS_VARLEN:
            return [pid]
        return _ramp_and_plateau(pid, pid % grid[0] // -(-V // BV), T, T, W, BT, BS, resident)

    return strata


COUNT_STRATA = {"attn_fwd": _strata("queries"), "attn_bwd_dq": _strata("queries"), "attn_bwd_dkdv": _strata("keys"),
                "parallel_attn_fwd_kernel": _fla_strata("queries"), "parallel_attn_bwd_kernel_dq": _fla_strata("queries"),
                "parallel_attn_bwd_kernel_dkv": _fla_strata("keys")}


# fp32: tf32x3 dots (~2^-21 a product, emulated on the CPU) and fp32 rounding grown over the reductions (~1e-6).
# fp16: p and dS are rounded to fp16 (2^-11 relative) before their matmuls, as in FlashAttention.
