"""Packed variable-length attention (FlashAttention's varlen layout): the public function, its checks, launch
and custom ops (``torch.ops.playground.attention_varlen``, ``attention_varlen_backward``). The kernels are
attention's own (``kernel.py``, ``kernel_bwd.py``) with ``VARLEN`` on.

    attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k)[cu_q[s]:cu_q[s+1]]
        = attention(q[cu_q[s]:cu_q[s+1]], k[cu_k[s]:cu_k[s+1]], v[cu_k[s]:cu_k[s+1]])      for every sequence s

Shapes: ``q: (total_q, q_heads, head_dim)``, ``k, v: (total_k, kv_heads, head_dim)`` (any strides: slices of a
fused qkv projection are read in place), ``cu_seqlens_q, cu_seqlens_k: (num_seqs + 1,)`` int32 prefix sums
(``cu[0] = 0``, non-decreasing, ``cu[-1]`` = total). Each sequence attends only within itself with
:func:`kernels.attention`'s conventions: causal is bottom-right aligned (a sequence's queries are the last
``q_len`` of its ``kv_len`` positions, so causal needs ``q_len <= kv_len`` per sequence), ``window=W`` keeps the
``W`` latest keys, GQA reads key/value head ``h // (q_heads // kv_heads)``. Sequences of length 0 and 1 are
fine; no padding is materialised.

How programs map to sequences (the FlashAttention-2 varlen design). The grids are those of the dense kernels
with the batch axis replaced by the sequences: forward and dQ ``(cdiv(max_seqlen_q, BLOCK_M), num_seqs *
q_heads)``, dK/dV ``(cdiv(max_seqlen_k, BLOCK_N), num_seqs * kv_heads)``. A program reads its sequence's start
and length from ``cu_seqlens`` (``blocks.sequence``), returns at once if its block lies past that sequence's
end, and otherwise runs the dense code on the sequence's rows: the token stride stands in for the batch stride,
so ``head_rows`` lands on the sequence's first row. The log-sum-exp and delta rows are ``(q_heads, total_q)``.
No split-KV here (a packed batch has ``num_seqs * heads`` programs per query block already); the delta kernel
sees the packed rows as one dense batch (delta is per token).

Short sequences. The prune rules size the tiles to the longest sequence (``max_seqlen_*``, up to a power of two):
32 x 32 forward tiles for sequences of at most 32 tokens, 64-row ones up to 64 (a 128-row tile over 32-token
documents computes 15.5 times their visible pairs). And when the longest sequence fits one dK/dV key tile (at
most 128 keys, ``_whole``), the backward is one launch: each dK/dV program holds its sequence's every key
(``WHOLE``), so it computes each query block's delta and its complete dq too (``kernel_bwd.py``): no delta or dQ
launch, and five matmuls a tile instead of seven.

TMA stays on: each program builds its tensor descriptors on the device with the shape of ITS sequence
(``[q_len or kv_len, head_dim]`` from the sequence's first row), so a box that overhangs the sequence's end reads
zeros and a store is clipped there, exactly as at a dense sequence's end: no read or write crosses into the next
sequence. The descriptor's start is the sequence's first row, 16-byte aligned whenever the token stride is
(which ``rt.tma_ok`` checks, as for dense inputs).

The host reads ``cu_seqlens`` once per call (``num_seqs + 1`` integers, a device sync on a GPU) to check them
(a malformed prefix sum would index out of range) and, when not given, to find ``max_seqlen_q / _k``. Under
``torch.compile`` the values cannot be read while tracing: there ``max_seqlen_q`` and ``max_seqlen_k`` must be
given, and the prefix sums are trusted (as FlashAttention always trusts them); their dtype, shape and device are
still checked.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
from torch import Tensor

from ... import _runtime as rt
from ..._custom_op import custom_op, extras_are_not_differentiable
from .api import LOG2E, MAX_HEAD_DIM, _bucket, _empty_like_layout, check_mask_args
from .kernel import attn_fwd
from .kernel_bwd import attn_bwd_delta, attn_bwd_dkdv, attn_bwd_dq, whole_keys
from ...common.precision import attention_dot_precision


def _as_4d(t: torch.Tensor):
    """A packed ``(total, heads, head_dim)`` tensor's strides as the kernels' ``(batch, heads, seq, head_dim)``
    tuple: the token stride stands in for the batch stride (a program offsets by its sequence's first token)."""
    s_tok, s_head, s_dim = t.stride()
    return (s_tok, s_head, s_tok, s_dim)


def _lengths(cu: list[int]) -> list[int]:
    return [b - a for a, b in zip(cu[:-1], cu[1:])]


def check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window, scale,
                      reference=False):
    """The argument checks of :func:`attention_varlen` (``reference=True``: of its reference, which also takes
    float64). Returns ``(cu_q, cu_k, max_seqlen_q, max_seqlen_k)``: the prefix sums as Python lists and the longest
    lengths (the given ones, which may exceed the true longest, or the true ones)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        rt.check_tensor(name, t, rank=3, float_only=not reference)
    if not reference:
        rt.check_like("k", k, "q", q)
        rt.check_like("v", v, "q", q)
    total_q, heads, head_dim = q.shape
    total_k, kv_heads = k.shape[0], k.shape[1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q's head_dim (last dim) must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    if k.shape[2] != head_dim:
        raise ValueError(f"k must have q's head_dim {head_dim} (last dim), got shape {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"q_heads ({heads}) must be a multiple of kv_heads ({kv_heads}): k's dim 1")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
        if cu.dtype != torch.int32:
            raise TypeError(f"{name} must be int32 (FlashAttention's varlen layout), got {cu.dtype}")
        if cu.dim() != 1 or cu.numel() < 1:
            raise ValueError(f"{name} must have shape (num_seqs + 1,), got {tuple(cu.shape)}")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device} but q is on {q.device}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length (num_seqs + 1), got "
                         f"{cu_seqlens_q.numel()} and {cu_seqlens_k.numel()}")
    check_mask_args(causal, window, scale)
    for name, given in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if given is not None and (isinstance(given, bool) or not isinstance(given, int)):
            raise TypeError(f"{name} must be an int or None, got {type(given).__name__}")
    if torch.compiler.is_compiling():
        # tracing: the prefix sums' values are not known, so they are not checked (as FlashAttention never does)
        if max_seqlen_q is None or max_seqlen_k is None:
            raise ValueError("under torch.compile, pass max_seqlen_q and max_seqlen_k: the prefix sums cannot be "
                             "read while tracing")
        return None, None, max_seqlen_q, max_seqlen_k
    cus = []
    for name, cu, total, rows in (("cu_seqlens_q", cu_seqlens_q, total_q, "q"),
                                  ("cu_seqlens_k", cu_seqlens_k, total_k, "k")):
        values = cu.tolist()
        if values[0] != 0 or any(b < a for a, b in zip(values[:-1], values[1:])):
            raise ValueError(f"{name} must start at 0 and never decrease (prefix sums of the lengths), got "
                             f"{values[:8]}{' ...' if len(values) > 8 else ''}")
        if values[-1] != total:
            raise ValueError(f"{name}[-1] ({values[-1]}) must be the total length of {rows} ({rows}'s dim 0: {total})")
        cus.append(values)
    cu_q, cu_k = cus
    q_lens, k_lens = _lengths(cu_q), _lengths(cu_k)
    for s, (m, n) in enumerate(zip(q_lens, k_lens)):
        if causal and m > n:
            raise ValueError(f"with causal=True, every sequence's q_len must be <= its kv_len (the queries are the "
                             f"last positions): sequence {s} of cu_seqlens_q / cu_seqlens_k has {m} > {n}")
        if n == 0 and m > 0:
            raise ValueError(f"a sequence with queries needs keys: sequence {s} of cu_seqlens_q / cu_seqlens_k has "
                             f"q_len {m}, kv_len 0")
    maxima = []
    for name, given, lens in (("max_seqlen_q", max_seqlen_q, q_lens), ("max_seqlen_k", max_seqlen_k, k_lens)):
        longest = max(lens, default=0)
        if given is None:
            maxima.append(longest)
            continue
        if given < longest:
            raise ValueError(f"{name} ({given}) is below the longest sequence's length ({longest})")
        maxima.append(given)
    return cu_q, cu_k, maxima[0], maxima[1]


def _common_args(q, k, max_seqlen_q, max_seqlen_k, causal, window):
    heads, head_dim = q.shape[1], q.shape[2]
    windowed = causal and window is not None and window < max_seqlen_k  # a window >= every kv_len hides nothing
    return dict(heads=heads, head_dim=head_dim, group=heads // k.shape[1], windowed=windowed,
                W=int(window) if windowed else 0, block_d=max(16, triton.next_power_of_2(head_dim)),
                precision=attention_dot_precision(q.dtype),
                buckets=(_bucket(max_seqlen_q), _bucket(max_seqlen_k), _bucket(window) if windowed else 0))


def varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window, scale):
    """The forward launch: ``(o, lse)``, ``o`` like q (its memory order), ``lse: (q_heads, total_q)`` fp32
    (base 2). ``cu_seqlens_*`` int32 on q's device, checked; ``max_seqlen_*`` at least the longest lengths."""
    a = _common_args(q, k, max_seqlen_q, max_seqlen_k, causal, window)
    H, D = a["heads"], a["head_dim"]
    total_q, total_k, seqs = q.shape[0], k.shape[0], cu_seqlens_q.numel() - 1
    o = _empty_like_layout(q)
    lse = rt.empty((H, total_q), torch.float32, q.device)
    if total_q == 0 or seqs == 0:
        return o, lse
    attn_fwd[lambda meta: (triton.cdiv(max_seqlen_q, meta["BLOCK_M"]), seqs * H, 1)](
        q, k, v, o, lse, o, lse, cu_seqlens_q, cu_seqlens_k,
        _as_4d(q), _as_4d(k), _as_4d(v), _as_4d(o),
        H, total_q, total_k, a["group"], a["W"], scale * LOG2E, max(max_seqlen_k, 1), *a["buckets"],
        D, a["block_d"], causal, a["windowed"], False, True, a["precision"], rt.tma_ok(q, k, v, o),
    )
    return o, lse


def varlen_backward(q, k, v, o, lse, do, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window,
                    scale):
    """The backward launches: ``(dq, dk, dv)``, each in its input's memory order."""
    a = _common_args(q, k, max_seqlen_q, max_seqlen_k, causal, window)
    H, D = a["heads"], a["head_dim"]
    HK = k.shape[1]
    total_q, total_k, seqs = q.shape[0], k.shape[0], cu_seqlens_q.numel() - 1
    dq, dk, dv = _empty_like_layout(q), _empty_like_layout(k), _empty_like_layout(v)
    if total_k == 0 or seqs == 0:
        return dq, dk, dv
    whole = _whole(max_seqlen_k, a["block_d"], q.element_size())
    # delta per token: the packed rows as one dense (1, heads, total_q, head_dim) batch (WHOLE: in dK/dV)
    delta = rt.empty((H, total_q) if not whole else (0,), torch.float32, q.device)
    if total_q > 0 and not whole:
        attn_bwd_delta[lambda meta: (triton.cdiv(total_q, meta["BLOCK_M"]), H)](
            o, do, delta, (0, *o.stride()[1::-1], o.stride(2)), (0, *do.stride()[1::-1], do.stride(2)), H, total_q,
            D, a["block_d"],
        )
    tail = (a["group"], a["W"], scale * LOG2E, scale, *a["buckets"],
            D, a["block_d"], causal, a["windowed"], True, a["precision"])
    # every key row gets its dk, dv (zero for a sequence without queries): the dK/dV grid covers every sequence
    attn_bwd_dkdv[lambda meta: (triton.cdiv(max_seqlen_k, meta["BLOCK_N"]), seqs * HK)](
        q, k, v, do, lse, delta, dk, dv, o, dq, cu_seqlens_q, cu_seqlens_k,
        _as_4d(q), _as_4d(k), _as_4d(v), _as_4d(do), _as_4d(dk), _as_4d(dv), _as_4d(o), _as_4d(dq),
        H, total_q, total_k, *tail, rt.tma_ok(q, k, v, do, dq, dk, dv, *((o,) if whole else ())), whole, False,
    )
    if total_q > 0 and not whole:
        attn_bwd_dq[lambda meta: (triton.cdiv(max_seqlen_q, meta["BLOCK_M"]), seqs * H)](
            q, k, v, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k,
            _as_4d(q), _as_4d(k), _as_4d(v), _as_4d(do), _as_4d(dq),
            H, total_q, total_k, *tail, rt.tma_ok(q, k, v, do, dq, dk, dv),
        )
    return dq, dk, dv


def _whole(max_seqlen_k, block_d, esize):
    """Whether the dK/dV launch holds each sequence whole (``WHOLE``: a program's key tile is its sequence's every
    key, and it computes delta and dq too; ``kernel_bwd.attn_bwd_dkdv``): when the longest sequence fits the
    widest key tile that fits shared memory, and, while a test forces a dK/dV config (which bypasses the prune
    rule that keeps only tiles holding the longest sequence), when the forced tile holds it."""
    forced = attn_bwd_dkdv.forced_config()
    widest = whole_keys(block_d, esize) if forced is None else forced.kwargs["BLOCK_N"]
    return 0 < max_seqlen_k <= widest


# ------------------------------------------------------------------------------------------------ the custom ops
#
#     torch.ops.playground.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
#                                           window, scale)                  -> (out, lse)
#     torch.ops.playground.attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
#                                                    max_seqlen_q, max_seqlen_k, causal, window, scale) -> (dq, dk, dv)


def _attention_varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window, scale):
    return _empty_like_layout(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _attention_varlen_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, *args = inputs
    ctx.save_for_backward(q, k, v, *output, cu_q, cu_k)
    ctx.args = tuple(args)
    extras_are_not_differentiable(ctx, output[1:])


def _attention_varlen_backward(ctx, dout, _dlse):
    if dout is None:
        return (None,) * 10
    dq, dk, dv = torch.ops.playground.attention_varlen_backward(dout, *ctx.saved_tensors, *ctx.args)
    return dq, dk, dv, *(None,) * 7


@custom_op("attention_varlen", _attention_varlen_fake, _attention_varlen_setup, _attention_varlen_backward)
def _attention_varlen_op(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                         max_seqlen_q: int, max_seqlen_k: int, causal: bool, window: Optional[int], scale: float
                         ) -> tuple[Tensor, Tensor]:
    return varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window, scale)


@custom_op("attention_varlen_backward", lambda dout, q, k, v, *_: tuple(_empty_like_layout(t) for t in (q, k, v)))
def _attention_varlen_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                                  cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                                  causal: bool, window: Optional[int], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return varlen_backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                           window, scale)


def prepare(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window, scale):
    """Checks, defaults: ``(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)`` as the launches take
    them (contiguous int32 prefix sums, the longest lengths, a float scale)."""
    _, _, max_q, max_k = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                           window, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_q, max_k, scale


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None, causal=True,
                     window=None, scale=None):
    """Attention over packed variable-length sequences (FlashAttention's varlen layout); see the module docstring.

    q: (total_q, q_heads, head_dim); k, v: (total_k, kv_heads, head_dim), q_heads % kv_heads == 0;
    cu_seqlens_q, cu_seqlens_k: (num_seqs + 1,) int32 prefix sums of the sequences' lengths. Sequence s is rows
    cu_seqlens_q[s]:cu_seqlens_q[s+1] of q and cu_seqlens_k[s]:cu_seqlens_k[s+1] of k, v, and attends only within
    itself, as :func:`kernels.attention` would on it alone (causal bottom-right aligned, window=W its W latest
    keys, scale 1/sqrt(head_dim) by default). max_seqlen_q / max_seqlen_k: the longest lengths, read from the
    prefix sums when None. Returns q's shape and dtype; differentiable in q, k and v.
    """
    cu_q, cu_k, max_q, max_k, scale = prepare(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                              causal, window, scale)
    return torch.ops.playground.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, window, scale)[0]
