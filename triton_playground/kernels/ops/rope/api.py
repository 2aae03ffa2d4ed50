"""Partial RoPE (GPT-NeoX "rotate half"): the public functions, their checks, launch and custom ops
(``torch.ops.playground.partial_rope``, ``partial_rope_qk``: fake and autograd below).

    y[:R/2]   = x[:R/2] * cos - x[R/2:R] * sin,   y[R/2:R] = x[R/2:R] * cos + x[:R/2] * sin,   y[R:] = x[R:]
    angle[i]  = float32(position) * inv_freq[i],  inv_freq[i] = theta ** (-2i / R),   R = rotary_dim (even)

Persimmon rotates ``R = head_dim * partial_rotary_factor`` (0.5) channels; OLMoE rotates all of them
(``R = head_dim``, the default).

Shapes: ``x: (batch, heads, seq, head_dim)`` with any strides (HF's q is a transposed view of the projection);
``positions: (seq,)`` or ``(batch, seq)``, any integer dtype, any strides (an ``expand``-ed row has stride 0).
The result is a new contiguous tensor of x's shape and dtype. The kernel, its tiling and its precision:
``kernel.py``.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from ... import _runtime as rt
from ..._custom_op import custom_op
from .kernel import rope_kernel
from .reference import inv_freq


def _launch(x, k, positions, rotary_dim, theta, backward):
    """One launch over x (and k, when given). Returns the new tensor(s), contiguous, in x's dtype."""
    b, hx, s, d = x.shape
    hk = k.shape[1] if k is not None else 0
    y = rt.empty(x.shape, x.dtype, x.device)
    ky = rt.empty(k.shape, k.dtype, k.device) if k is not None else None
    k_, ky_ = (k, ky) if k is not None else (x, y)  # placeholders: the k loop runs zero times
    pos = positions if positions.dim() == 2 else positions[None, :]  # (1, seq): batch stride 0 below
    s_pb = pos.stride(0) if pos.shape[0] > 1 else 0
    half = rotary_dim // 2
    n_pass = d - rotary_dim
    if b == 0 or s == 0 or hx + hk == 0:
        return y, ky
    rope_kernel[lambda meta: (triton.cdiv(s, meta["BLOCK_S"]), b, triton.cdiv(hx + hk, meta["HEADS"]))](
        x, y, k_, ky_, pos, inv_freq(rotary_dim, float(theta), x.device),
        hx, hk, s, d, half,
        *x.stride(), *y.stride(), *k_.stride(), *ky_.stride(),
        s_pb, pos.stride(1),
        BACKWARD=backward, BLOCK_R=triton.next_power_of_2(half), BLOCK_P=triton.next_power_of_2(max(n_pass, 1)),
        HAS_PASS=n_pass > 0,
    )
    return y, ky


# ------------------------------------------------------------------------------------------------ the custom ops
#
#     torch.ops.playground.partial_rope(x, positions, rotary_dim, theta, inverse=False)       -> y
#     torch.ops.playground.partial_rope_qk(q, k, positions, rotary_dim, theta, inverse=False) -> (q', k')
#
# No backward op: a rotation's transpose is its inverse, the same op with inverse=True.


def _rope_setup(ctx, inputs, output):
    positions, ctx.rotary_dim, ctx.theta, ctx.inverse = inputs[-4:]
    ctx.save_for_backward(positions)


def _rope_backward(ctx, dy):  # a rotation's transpose is its inverse
    dx = torch.ops.playground.partial_rope(dy, *ctx.saved_tensors, ctx.rotary_dim, ctx.theta, not ctx.inverse)
    return dx, None, None, None, None


def _rope_qk_backward(ctx, dq, dk):
    (positions,) = ctx.saved_tensors
    dq, dk = torch.ops.playground.partial_rope_qk(dq, dk, positions, ctx.rotary_dim, ctx.theta, not ctx.inverse)
    return dq, dk, None, None, None, None


@custom_op("partial_rope", lambda x, *_: x.new_empty(x.shape), _rope_setup, _rope_backward)
def _partial_rope_op(x: Tensor, positions: Tensor, rotary_dim: int, theta: float, inverse: bool = False) -> Tensor:
    return _launch(x, None, positions, rotary_dim, theta, backward=inverse)[0]


@custom_op("partial_rope_qk", lambda q, k, *_: (q.new_empty(q.shape), k.new_empty(k.shape)), _rope_setup,
           _rope_qk_backward)
def _partial_rope_qk_op(q: Tensor, k: Tensor, positions: Tensor, rotary_dim: int, theta: float,
                        inverse: bool = False) -> tuple[Tensor, Tensor]:
    return _launch(q, k, positions, rotary_dim, theta, backward=inverse)


def _check(x, positions, rotary_dim, theta, name="x"):
    rt.check_tensor(name, x, rank=4)
    d = x.shape[-1]
    if rotary_dim is None:
        rotary_dim = d
    if not isinstance(rotary_dim, int) or isinstance(rotary_dim, bool):
        raise TypeError(f"rotary_dim must be an int or None, got {type(rotary_dim).__name__}")
    if rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even (channels rotate in pairs), got {rotary_dim}")
    if not 2 <= rotary_dim <= d:
        raise ValueError(f"rotary_dim must be in [2, head_dim={d}], got {rotary_dim}")
    rt.check_positive("theta", theta)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a torch.Tensor, got {type(positions).__name__}")
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    b, _, s, _ = x.shape
    if tuple(positions.shape) not in ((s,), (b, s)):
        raise ValueError(f"positions must have shape (seq,) = ({s},) or (batch, seq) = ({b}, {s}), "
                         f"got {tuple(positions.shape)}")
    if positions.device != x.device:
        raise ValueError(f"positions is on {positions.device} but {name} is on {x.device}")
    return rotary_dim


def partial_rope(x, positions, *, rotary_dim=None, theta=10000.0):
    """Rotate the first ``rotary_dim`` channels of ``x: (batch, heads, seq, head_dim)`` (GPT-NeoX rotate-half);
    the rest pass through. ``positions``: integer ``(seq,)`` or ``(batch, seq)``. Returns a new contiguous tensor."""
    rotary_dim = _check(x, positions, rotary_dim, theta)
    return torch.ops.playground.partial_rope(x, positions, rotary_dim, float(theta))


def partial_rope_qk(q, k, positions, *, rotary_dim=None, theta=10000.0):
    """``(partial_rope(q, ...), partial_rope(k, ...))`` in one launch. ``q: (batch, heads, seq, head_dim)``,
    ``k: (batch, kv_heads, seq, head_dim)``: ``k`` may have fewer heads than ``q`` (GQA); batch, seq and
    head_dim must match."""
    rotary_dim = _check(q, positions, rotary_dim, theta, name="q")
    rt.check_like("k", k, "q", q)
    if k.dim() != 4 or (k.shape[0], k.shape[2], k.shape[3]) != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(f"k must have shape (batch, kv_heads, seq, head_dim) = ({q.shape[0]}, *, {q.shape[2]}, "
                         f"{q.shape[3]}) like q, got {tuple(k.shape)}")
    return torch.ops.playground.partial_rope_qk(q, k, positions, rotary_dim, float(theta))
