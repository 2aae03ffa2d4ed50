"""Causal attention with an optional sliding window: the public function, its checks, launch and custom
ops (``torch.ops.playground.attention``, ``attention_backward``: fake and autograd below).

    attention(q, k, v) = softmax(scale * q @ k^T + mask) @ v

Shapes: ``q: (batch, q_heads, q_len, head_dim)``, ``k, v: (batch, kv_heads, kv_len, head_dim)`` with
``q_heads % kv_heads == 0``: query head ``h`` reads key/value head ``h // group``, ``group = q_heads // kv_heads``
(grouped-query attention; ``kv_heads == 1`` is multi-query). Any strides (the usual input is a transposed
``(batch, seq, heads, head_dim)`` view), any ``head_dim`` from 1 to 256, fp32 / fp16 / bf16.

Which keys a query sees. With ``causal=True`` the queries are the LAST ``q_len`` positions of the key sequence:
query row ``i`` sits at position ``p = kv_len - q_len + i`` (a decode step, ``q_len = 1``, is the newest token
against the whole cache) and sees keys ``j <= p``. A window ``W`` keeps only the last ``W`` of those, itself
included: ``p - W < j <= p``. That is Hugging Face transformers' ``sliding_window`` convention; FlashAttention
writes the same mask as ``window_size=(W - 1, 0)``, and FlexAttention's sliding-window examples
(``q_idx - kv_idx <= W``) keep ``W + 1`` keys — our ``window=W`` is their ``W - 1``. ``causal=False`` is full
bidirectional attention (no window). Every query sees at least itself, so no softmax row is empty.

The kernels (FlashAttention-2: forward, split-KV combine, backward), their math and tiling: ``kernel.py`` and
``kernel_bwd.py``. Here: the launch — the grids, the constexprs, and the split-KV plan for decode rows.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
from torch import Tensor

from ... import _runtime as rt
from ..._custom_op import custom_op, extras_are_not_differentiable
from ...common.precision import attention_dot_precision
from .kernel import MAX_BLOCK, attn_combine, attn_fwd
from .kernel_bwd import attn_bwd_delta, attn_bwd_dkdv, attn_bwd_dq

LOG2E = 1.4426950408889634  # the kernels' softmax is base 2: scores are scaled by scale * log2(e)
MAX_HEAD_DIM = 256
SPLIT_ALIGN = 128  # split-KV chunks are multiples of this (every BLOCK_N divides it)
DQ_ADD_MIN_WINDOW = 1024  # the shortest window whose backward adds dq in dK/dV (_backward)
DQ_ADD_MIN_KEYS = 4096  # and the shortest kv_len


def _empty_like_layout(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """An rt.empty output of t's shape whose memory order follows t's strides (a transposed (b, s, h, d) input
    gets a transposed (b, s, h, d) output, so the caller's reshape back to (b, s, h * d) is free)."""
    order = sorted(range(t.dim()), key=lambda i: (-t.stride(i), i))
    buf = rt.empty([t.shape[i] for i in order], dtype or t.dtype, t.device)
    inverse = [order.index(i) for i in range(t.dim())]
    return buf.permute(inverse)


def _bucket(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def _split_plan(batch, heads, q_len, kv_len, window, num_splits=None):
    """Split-KV plan: (num_splits, split_len), split_len a multiple of SPLIT_ALIGN (so of every BLOCK_N).

    ``span`` bounds the key range [lo, hi) of any query block (the window, plus a query block, plus the
    rounding of lo down to a block), so ``num_splits * split_len >= span`` leaves no key out. Short queries
    split when ``batch * heads`` programs would leave multiprocessors idle: about two waves, each chunk at
    least ``min_len`` keys. ``num_splits`` forces a count (tests).
    """
    span = kv_len if window is None else min(kv_len, window + min(q_len, MAX_BLOCK) + MAX_BLOCK)
    if num_splits is None:
        sms = rt.num_sms()
        programs = batch * heads * triton.cdiv(q_len, 64)
        min_len = SPLIT_ALIGN if rt.INTERPRET else 512
        if q_len > 64 or programs >= sms or span < 2 * min_len:
            return 1, kv_len
        num_splits = min(triton.cdiv(2 * sms, programs), span // min_len)
    if num_splits <= 1:
        return 1, kv_len
    split_len = triton.cdiv(triton.cdiv(span, num_splits), SPLIT_ALIGN) * SPLIT_ALIGN
    return triton.cdiv(span, split_len), split_len


def _common_args(q, k, causal, window):
    batch, heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    windowed = causal and window is not None and window < kv_len  # a window >= kv_len hides nothing
    block_d = max(16, triton.next_power_of_2(head_dim))
    return dict(batch=batch, heads=heads, q_len=q_len, kv_len=kv_len, head_dim=head_dim, group=heads // k.shape[1],
                windowed=windowed, W=int(window) if windowed else 0, block_d=block_d,
                precision=attention_dot_precision(q.dtype),
                buckets=(_bucket(q_len), _bucket(kv_len), _bucket(window) if windowed else 0))


def _forward(q, k, v, causal, window, scale, num_splits=None):
    a = _common_args(q, k, causal, window)
    B, H, M, N, D = a["batch"], a["heads"], a["q_len"], a["kv_len"], a["head_dim"]
    o = _empty_like_layout(q)
    lse = rt.empty((B, H, M), torch.float32, q.device)
    splits, split_len = _split_plan(B, H, M, N, a["W"] if a["windowed"] else None, num_splits)
    split = splits > 1
    if split:
        o_part = rt.empty((splits, B * H, M, D), torch.float32, q.device)
        lse_part = rt.empty((splits, B * H, M), torch.float32, q.device)
    else:
        o_part, lse_part = o, lse  # unused
    attn_fwd[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H, splits)](
        q, k, v, o, lse, o_part, lse_part, None, None,
        q.stride(), k.stride(), v.stride(), o.stride(),
        H, M, N, a["group"], a["W"], scale * LOG2E, split_len, *a["buckets"],
        D, a["block_d"], causal, a["windowed"], split, False, a["precision"], rt.tma_ok(q, k, v, o),
    )
    if split:
        attn_combine[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H)](
            o_part, lse_part, o, lse, o.stride(), H, M, B * H, splits, D, a["block_d"],
        )
    return o, lse


def _backward(q, k, v, o, lse, do, causal, window, scale):
    a = _common_args(q, k, causal, window)
    B, H, M, N, D = a["batch"], a["heads"], a["q_len"], a["kv_len"], a["head_dim"]
    HK = k.shape[1]
    delta = rt.empty((B, H, M), torch.float32, q.device)
    attn_bwd_delta[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H)](
        o, do, delta, o.stride(), do.stride(), H, M, D, a["block_d"],
    )
    dq, dk, dv = _empty_like_layout(q), _empty_like_layout(k), _empty_like_layout(v)
    tail = (a["group"], a["W"], scale * LOG2E, scale, *a["buckets"],
            D, a["block_d"], causal, a["windowed"], False, a["precision"], rt.tma_ok(q, k, v, do, dq, dk, dv))
    # DQ_ADD (kernel_bwd.py): each dK/dV program adds its key block's share of dq into an fp32 accumulator, cast
    # into dq after; no dQ launch. Five matmuls a tile instead of seven, for fp32 atomic traffic of 8 * head_dim
    # bytes per (query row, key block) it sees, which L2 absorbs while a query row's band spans many key blocks.
    # With a short window it does not (H100 model at 16k tokens: a 256-key window's backward 0.60 -> 0.78 ms at
    # head dim 64, where no window goes 9.8 -> 7.3 ms and a 1024-key one 1.42 -> 1.27): there dQ is its own launch.
    # Nor on short sequences: the dK/dV grid (a program per 128 keys) is then under a wave, and its programs, each
    # carrying dQ's work too, pace the launch (model, batch 2 x 16 heads, head dim 128, no window: 2048 tokens
    # 0.26 -> 0.32 ms, 4096 tokens 0.72 -> 0.59). Up to head dim 128: past it, dk, dv and the dq share do not fit
    # a tile's registers.
    dq_add = ((not a["windowed"] or a["W"] >= DQ_ADD_MIN_WINDOW) and a["block_d"] <= 128
              and N >= DQ_ADD_MIN_KEYS)
    dq_acc = torch.zeros((B, H, M, D), dtype=torch.float32, device=q.device) if dq_add else dq
    attn_bwd_dkdv[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B * HK)](
        q, k, v, do, lse, delta, dk, dv, o, dq_acc, None, None,
        q.stride(), k.stride(), v.stride(), do.stride(), dk.stride(), dv.stride(), o.stride(), dq_acc.stride(),
        H, M, N, *tail, False, dq_add,  # never WHOLE (varlen.py's short sequences)
    )
    if dq_add:
        dq.copy_(dq_acc)
    else:
        attn_bwd_dq[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B * H)](
            q, k, v, do, lse, delta, dq, None, None,
            q.stride(), k.stride(), v.stride(), do.stride(), dq.stride(),
            H, M, N, *tail,
        )
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------ the custom ops
#
#     torch.ops.playground.attention(q, k, v, causal, window, scale)                       -> (out, lse)
#     torch.ops.playground.attention_backward(dout, q, k, v, out, lse, causal, window, scale) -> (dq, dk, dv)
#
# The log-sum-exp ``lse`` (fp32, (batch, heads, q_len)) is what the backward reads.


def _attention_fake(q, k, v, causal, window, scale):
    return _empty_like_layout(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, window, scale = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = (causal, window, scale)
    extras_are_not_differentiable(ctx, output[1:])


def _attention_backward(ctx, dout, _dlse):
    if dout is None:
        return (None,) * 6
    dq, dk, dv = torch.ops.playground.attention_backward(dout, *ctx.saved_tensors, *ctx.args)
    return dq, dk, dv, None, None, None


@custom_op("attention", _attention_fake, _attention_setup, _attention_backward)
def _attention_op(q: Tensor, k: Tensor, v: Tensor, causal: bool, window: Optional[int], scale: float
                  ) -> tuple[Tensor, Tensor]:
    if q.numel() == 0:
        return _attention_fake(q, k, v, causal, window, scale)
    return _forward(q, k, v, causal, window, scale)


@custom_op("attention_backward", lambda dout, q, k, v, *_: tuple(_empty_like_layout(t) for t in (q, k, v)))
def _attention_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool,
                           window: Optional[int], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(q, k, v, out, lse, dout, causal, window, scale)


def check_args(q, k, v, causal, window, scale, reference=False):
    """The argument checks of :func:`attention` (and, with ``reference=True``, of the reference, which also
    takes float64 and mixed dtypes)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        rt.check_tensor(name, t, rank=4, float_only=not reference)  # the reference also takes float64
    if not reference:
        rt.check_like("k", k, "q", q)
        rt.check_like("v", v, "q", q)
    batch, heads, q_len, head_dim = q.shape
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q's head_dim (last dim) must be in [1, {MAX_HEAD_DIM}], got {head_dim}")
    if k.shape[0] != batch:
        raise ValueError(f"k must have q's batch size {batch} (dim 0), got shape {tuple(k.shape)}")
    if k.shape[3] != head_dim:
        raise ValueError(f"k must have q's head_dim {head_dim} (last dim), got shape {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"q_heads ({heads}) must be a multiple of kv_heads ({kv_heads}): k's dim 1")
    check_mask_args(causal, window, scale)
    if causal and q_len > kv_len:
        raise ValueError(f"with causal=True, q_len ({q_len}, q's dim 2) must be <= kv_len ({kv_len}, k's dim 2)")
    if kv_len == 0 and q_len > 0:
        raise ValueError(f"kv_len (k's dim 2) must be >= 1 when q_len > 0, got {kv_len}")


def check_mask_args(causal, window, scale):
    """causal, window and scale: their types and ranges (shared by attention and attention_varlen)."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if window is not None:
        if not causal:
            raise ValueError("window needs causal=True (a sliding window is causal); got causal=False")
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window must be an int or None, got {type(window).__name__}")
        if window < 1:
            raise ValueError(f"window must be >= 1 (keys seen, the query's own included), got {window}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise TypeError(f"scale must be a finite number or None, got {scale!r}")


def attention(q, k, v, *, causal=True, window=None, scale=None):
    """Scaled dot-product attention, causal with an optional sliding window; see the module docstring.

    q: (batch, q_heads, q_len, head_dim); k, v: (batch, kv_heads, kv_len, head_dim), q_heads % kv_heads == 0.
    causal: the queries are the last q_len key positions (q_len <= kv_len); window=W: each query sees its W
    latest keys, itself included (HF ``sliding_window``; FlashAttention ``window_size=(W-1, 0)``). scale defaults
    to 1/sqrt(head_dim). Returns q's shape and dtype; differentiable in q, k and v.
    """
    check_args(q, k, v, causal, window, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.numel() == 0:
        return q.clone()
    return torch.ops.playground.attention(q, k, v, causal, window, scale)[0]
