"""Every public op as a ``torch.library`` custom op in the namespace ``playground``, so ``torch.compile`` traces
through them (``fullgraph=True``: no graph break), and the public functions (``kernels.attention``, ...) that
call them.

    torch.ops.playground.attention(q, k, v, causal, window, scale)        -> (out, lse)
    torch.ops.playground.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                          window, scale)                  -> (out, lse)
    torch.ops.playground.layer_norm(x, weight, bias, eps)                 -> (y, mean, rstd)
    torch.ops.playground.rms_norm(x, weight, eps)                         -> (y, rstd)
    torch.ops.playground.partial_rope(x, positions, rotary_dim, theta, inverse=False)       -> y
    torch.ops.playground.partial_rope_qk(q, k, positions, rotary_dim, theta, inverse=False) -> (q', k')
    torch.ops.playground.mlp(x, w_in, b_in, w_out, b_out, activation, grads)   -> (y, a, h)
    torch.ops.playground.topk_routing(logits, k, normalize)               -> (weights, ids)
    torch.ops.playground.moe(x, router_weight, gate_up, down, k, normalize, train)  -> (out, *saved)
    backward ops: attention_backward, attention_varlen_backward, norm_backward, mlp_backward, topk_routing_backward,
    moe_backward

Each op returns its result first, then what its backward reads (the attention's log-sum-exp, the norms' row
statistics, the MLP's activation ``a`` and pre-activation ``h``), marked non-differentiable; ``kernels.<op>``
returns the result alone. The MLP's ``grads`` (five bools: x, w_in, b_in, w_out, b_out need a gradient) says what
to keep: ``h`` only when x, w_in or b_in needs one, nothing when none does (an empty tensor stands for it). Each op
has a fake (meta) implementation giving exactly the real outputs' shapes, dtypes and strides, and its autograd
formula registered with ``register_autograd``; the backward ops are ops too (a compiled graph's backward calls
them). RoPE needs none: its backward is the inverse rotation, the same op with ``inverse=True``. The MoE layer's
``train`` (some input needs a gradient) says whether to keep what its backward reads (``moe_api.Saved``: logits,
routing, dispatch, activation and gate/up pre-activations; empty tensors otherwise), as the MLP's ``grads`` does.

The implementations are the api.py functions themselves: the launches stay there. Where an api.py keeps its
forward and backward inside a ``torch.autograd.Function`` (norms, MLP, routing), the op calls that Function's
static ``forward``/``backward`` with a stand-in context (:class:`_Ctx`) that records what it saves.

Opaque everywhere: every op is a ``torch.library.custom_op``, on the CPU and on a GPU, which ``torch.compile``
calls as one node (Inductor compiles the graph around it; it never fuses into a user Triton kernel either way).
None goes through ``triton_op`` + ``wrap_triton`` yet, which would spare the Python dispatch per call and let
AOTInductor package the kernels: its body must trace on fake tensors with every launch wrapped, and under the
interpreter ``wrap_triton`` hands the kernel back unwrapped, so no such path can run without a GPU, and none was
at hand. The candidates, easiest first: the norms, routing and MLP (``rt.Tuned`` kernels with scalar arguments:
a ``wrap_triton`` hook in ``rt.Tuned`` would do), RoPE (its cached inverse-frequency table is a real tensor made
outside fake mode), attention (stride tuples as kernel arguments), the MoE (seven launches forward, nine back).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import _runtime as rt
from .ops.attention import api as attention_api
from .ops.attention import varlen as attention_varlen_api
from .ops.layer_norm import api as norm_api
from .ops.mlp import api as mlp_api
from .ops.mlp.kernel import ACTIVATIONS
from .ops.moe import api as moe_api
from .ops.rope import api as rope_api
from .ops.routing import api as routing_api

IMPLEMENTATIONS: dict[str, object] = {}  # "playground::<op>" -> its Python implementation (kernels.count reads it)


class _Ctx:
    """Stands in for an autograd context, so that a ``torch.autograd.Function``'s static forward/backward runs as
    a plain function: what the forward saves lands in ``saved_tensors``, attributes it sets stay on it."""

    def __init__(self, needs_input_grad=(), saved_tensors=(), **attributes):
        self.needs_input_grad, self.saved_tensors = tuple(needs_input_grad), tuple(saved_tensors)
        self.__dict__.update(attributes)

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        pass


def _op(name, fake, setup_context=None, backward=None):
    """Register the decorated function as ``playground::<name>`` with its fake and (optional) autograd formula."""

    def register(fn):
        op = torch.library.custom_op(f"playground::{name}", mutates_args=())(fn)
        op.register_fake(fake)
        if backward is not None:
            op.register_autograd(backward, setup_context=setup_context)
        IMPLEMENTATIONS[f"playground::{name}"] = fn
        return op

    return register


def _extras_are_not_differentiable(ctx, extras) -> None:
    """An op's outputs after the first are for its backward: no gradient flows into them, and none is made up
    (an unused output's gradient stays None, not a zero tensor)."""
    ctx.mark_non_differentiable(*extras)
    ctx.set_materialize_grads(False)


def _empty(like: Tensor) -> Tensor:
    """The stand-in for a tensor an op does not produce (a gradient nobody asked for, ``h`` kept for no one)."""
    return like.new_empty(0)


def _or_empty(t, like):
    return _empty(like) if t is None else t


def _if(flag, shape, like, dtype=None):
    return like.new_empty(shape, dtype=dtype) if flag else _empty(like)


# ------------------------------------------------------------------------------------------------ attention


def _attention_fake(q, k, v, causal, window, scale):
    return attention_api._empty_like_layout(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _attention_setup(ctx, inputs, output):
    q, k, v, causal, window, scale = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.args = (causal, window, scale)
    _extras_are_not_differentiable(ctx, output[1:])


def _attention_backward(ctx, dout, _dlse):
    if dout is None:
        return (None,) * 6
    dq, dk, dv = torch.ops.playground.attention_backward(dout, *ctx.saved_tensors, *ctx.args)
    return dq, dk, dv, None, None, None


@_op("attention", _attention_fake, _attention_setup, _attention_backward)
def _attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, window: Optional[int], scale: float
               ) -> tuple[Tensor, Tensor]:
    if q.numel() == 0:
        return _attention_fake(q, k, v, causal, window, scale)
    return attention_api._forward(q, k, v, causal, window, scale)


@_op("attention_backward", lambda dout, q, k, v, *_: tuple(attention_api._empty_like_layout(t) for t in (q, k, v)))
def _attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool,
                   window: Optional[int], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return attention_api._backward(q, k, v, out, lse, dout, causal, window, scale)


# ------------------------------------------------------------------------------------------------ attention, varlen


def _attention_varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, window, scale):
    return attention_api._empty_like_layout(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _attention_varlen_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, *args = inputs
    ctx.save_for_backward(q, k, v, *output, cu_q, cu_k)
    ctx.args = tuple(args)
    _extras_are_not_differentiable(ctx, output[1:])


def _attention_varlen_backward(ctx, dout, _dlse):
    if dout is None:
        return (None,) * 10
    dq, dk, dv = torch.ops.playground.attention_varlen_backward(dout, *ctx.saved_tensors, *ctx.args)
    return dq, dk, dv, *(None,) * 7


@_op("attention_varlen", _attention_varlen_fake, _attention_varlen_setup, _attention_varlen_backward)
def _attention_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
                      max_seqlen_k: int, causal: bool, window: Optional[int], scale: float) -> tuple[Tensor, Tensor]:
    return attention_varlen_api.varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                               causal, window, scale)


@_op("attention_varlen_backward",
     lambda dout, q, k, v, *_: tuple(attention_api._empty_like_layout(t) for t in (q, k, v)))
def _attention_varlen_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                          causal: bool, window: Optional[int], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return attention_varlen_api.varlen_backward(q, k, v, out, lse, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                max_seqlen_k, causal, window, scale)


# ------------------------------------------------------------------------------------------------ norms


def _norm_fake(x, weight, bias, eps, rms=False):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(x.shape), *(x.new_empty(rows, dtype=torch.float32) for _ in range(1 if rms else 2)))


def _norm(x, weight, bias, eps, rms):
    ctx = _Ctx()
    y = norm_api._Norm.forward(ctx, x, weight, bias, eps, rms)
    _, _, _, mean, rstd = ctx.saved_tensors
    return (y, rstd) if rms else (y, mean, rstd)


def _norm_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3] if len(inputs) == 4 else (inputs[0], inputs[1], None)
    mean, rstd = output[1:] if len(output) == 3 else (None, output[1])
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    _extras_are_not_differentiable(ctx, output[1:])


def _norm_backward(ctx, dy, *_dstats):
    if dy is None:
        return (None,) * len(ctx.needs_input_grad)
    x, weight, bias, mean, rstd = ctx.saved_tensors
    grads = list(ctx.needs_input_grad[:3]) if bias is not None else [*ctx.needs_input_grad[:2], False]
    dx, dw, db = torch.ops.playground.norm_backward(dy, x, weight, bias, mean, rstd, grads)
    dw, db = (dw if grads[1] else None), (db if grads[2] else None)
    return (dx, dw, db, None) if len(ctx.needs_input_grad) == 4 else (dx, dw, None)


@_op("layer_norm", _norm_fake, _norm_setup, _norm_backward)
def _layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
                ) -> tuple[Tensor, Tensor, Tensor]:
    return _norm(x, weight, bias, eps, rms=False)


@_op("rms_norm", lambda x, weight, eps: _norm_fake(x, weight, None, eps, rms=True), _norm_setup, _norm_backward)
def _rms_norm(x: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    return _norm(x, weight, None, eps, rms=True)


def _norm_bwd_fake(dy, x, weight, bias, mean, rstd, grads):
    return (x.new_empty(x.shape), _if(weight is not None and grads[1], x.shape[-1:], x),
            _if(bias is not None and grads[2], x.shape[-1:], x))


@_op("norm_backward", _norm_bwd_fake)
def _norm_bwd(dy: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Optional[Tensor],
              rstd: Tensor, grads: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    """``mean`` None: RMSNorm (the kernel reads no mean then; rstd stands in for the pointer)."""
    ctx = _Ctx((*grads, False, False), (x, weight, bias, rstd if mean is None else mean, rstd), rms=mean is None)
    dx, dw, db, _, _ = norm_api._Norm.backward(ctx, dy)
    return dx, _or_empty(dw, x), _or_empty(db, x)


# ------------------------------------------------------------------------------------------------ RoPE


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


@_op("partial_rope", lambda x, *_: x.new_empty(x.shape), _rope_setup, _rope_backward)
def _partial_rope(x: Tensor, positions: Tensor, rotary_dim: int, theta: float, inverse: bool = False) -> Tensor:
    return rope_api._launch(x, None, positions, rotary_dim, theta, backward=inverse)[0]


@_op("partial_rope_qk", lambda q, k, *_: (q.new_empty(q.shape), k.new_empty(k.shape)), _rope_setup,
     _rope_qk_backward)
def _partial_rope_qk(q: Tensor, k: Tensor, positions: Tensor, rotary_dim: int, theta: float, inverse: bool = False
                     ) -> tuple[Tensor, Tensor]:
    return rope_api._launch(q, k, positions, rotary_dim, theta, backward=inverse)


# ------------------------------------------------------------------------------------------------ MLP


def _mlp_fake(x, w_in, b_in, w_out, b_out, activation, grads):
    tokens, inner = x.numel() // x.shape[-1], w_in.shape[0]
    return (x.new_empty((*x.shape[:-1], w_out.shape[0])), _if(any(grads), (tokens, inner), x),
            _if(any(grads[:3]), (tokens, inner), x))


def _mlp_setup(ctx, inputs, output):
    x, w_in, b_in, w_out, b_out, ctx.activation, _ = inputs
    ctx.save_for_backward(x, w_in, w_out, *output[1:])
    ctx.has_bias = (b_in is not None, b_out is not None)
    _extras_are_not_differentiable(ctx, output[1:])


def _mlp_backward(ctx, dy, _da, _dh):
    if dy is None:
        return (None,) * 7
    grads = list(ctx.needs_input_grad[:5])
    out = torch.ops.playground.mlp_backward(dy, *ctx.saved_tensors, *ctx.has_bias, ctx.activation, grads)
    return (*(g if need else None for g, need in zip(out, grads)), None, None)


@_op("mlp", _mlp_fake, _mlp_setup, _mlp_backward)
def _mlp(x: Tensor, w_in: Tensor, b_in: Optional[Tensor], w_out: Tensor, b_out: Optional[Tensor], activation: str,
         grads: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
    ctx = _Ctx((*grads, False))
    y = mlp_api._MLP.forward(ctx, x, w_in, b_in, w_out, b_out, ACTIVATIONS[activation])
    if not any(grads):
        return y, _empty(x), _empty(x)
    a, h = ctx.saved_tensors[3:]
    return y, a, _or_empty(h, x)


def _mlp_bwd_fake(dy, x, w_in, w_out, a, h, has_b_in, has_b_out, activation, grads):
    shapes = (x.shape, w_in.shape, w_in.shape[:1], w_out.shape, w_out.shape[:1])
    flags = (grads[0], grads[1], grads[2] and has_b_in, grads[3], grads[4] and has_b_out)
    return tuple(_if(flag, shape, x) for flag, shape in zip(flags, shapes))


@_op("mlp_backward", _mlp_bwd_fake)
def _mlp_bwd(dy: Tensor, x: Tensor, w_in: Tensor, w_out: Tensor, a: Tensor, h: Tensor, has_b_in: bool,
             has_b_out: bool, activation: str, grads: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = [grads[0], grads[1], grads[2] and has_b_in, grads[3], grads[4] and has_b_out]
    ctx = _Ctx((*grads, False), (x, w_in, w_out, a, h if any(grads[:3]) else None), act=ACTIVATIONS[activation])
    return tuple(_or_empty(g, x) for g in mlp_api._MLP.backward(ctx, dy)[:5])


# ------------------------------------------------------------------------------------------------ routing, MoE


def _routing_fake(logits, k, normalize):
    shape = (*logits.shape[:-1], k)
    return logits.new_empty(shape), logits.new_empty(shape, dtype=torch.int64)


def _routing_setup(ctx, inputs, output):
    logits, _, ctx.normalize = inputs
    ctx.save_for_backward(logits, output[1])
    _extras_are_not_differentiable(ctx, output[1:])


def _routing_backward(ctx, dweights, _dids):
    if dweights is None:
        return None, None, None
    return torch.ops.playground.topk_routing_backward(dweights, *ctx.saved_tensors, ctx.normalize), None, None


@_op("topk_routing", _routing_fake, _routing_setup, _routing_backward)
def _topk_routing(logits: Tensor, k: int, normalize: bool) -> tuple[Tensor, Tensor]:
    weights, ids = routing_api._Routing.forward(_Ctx(), logits.reshape(-1, logits.shape[-1]), k, normalize)
    return weights.view(*logits.shape[:-1], k), ids.view(*logits.shape[:-1], k)


@_op("topk_routing_backward", lambda dweights, logits, ids, normalize: logits.new_empty(logits.shape))
def _topk_routing_bwd(dweights: Tensor, logits: Tensor, ids: Tensor, normalize: bool) -> Tensor:
    k = ids.shape[-1]
    ctx = _Ctx(saved_tensors=(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1, k)), normalize=normalize)
    return routing_api._Routing.backward(ctx, dweights.reshape(-1, k), None)[0].view(logits.shape)


def _moe_fake(x, router_weight, gate_up, down, k, normalize, train):
    if not train:
        return (x.new_empty(x.shape), *(_empty(x) for _ in moe_api.Saved._fields))
    shapes = moe_api.saved_shapes(x.numel() // x.shape[-1], k, router_weight.shape[0], down.shape[2])
    return (x.new_empty(x.shape), *(x.new_empty(shape, dtype=dtype or x.dtype)
                                    for shape, dtype in zip(shapes, moe_api.SAVED_DTYPES)))


def _moe_setup(ctx, inputs, output):
    x, router_weight, gate_up, down, ctx.k, ctx.normalize, _ = inputs
    ctx.save_for_backward(x, router_weight, gate_up, down, *output[1:])
    _extras_are_not_differentiable(ctx, output[1:])


def _moe_backward(ctx, dout, *_dsaved):
    if dout is None:
        return (None,) * 7
    grads = list(ctx.needs_input_grad[:4])
    out = torch.ops.playground.moe_backward(dout, *ctx.saved_tensors, ctx.k, ctx.normalize, grads)
    return (*(g if need else None for g, need in zip(out, grads)), None, None, None)


@_op("moe", _moe_fake, _moe_setup, _moe_backward)
def _moe(x: Tensor, router_weight: Tensor, gate_up: Tensor, down: Tensor, k: int, normalize: bool, train: bool
         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    out, saved = moe_api._forward(x, router_weight, gate_up, down, k, normalize, train=train)
    return (out, *(saved if train else (_empty(x) for _ in moe_api.Saved._fields)))


def _moe_bwd_fake(dout, x, router_weight, gate_up, down, *rest):
    grads = rest[-1]
    return tuple(_if(flag, t.shape, t) for flag, t in zip(grads, (x, router_weight, gate_up, down)))


@_op("moe_backward", _moe_bwd_fake)
def _moe_bwd(dout: Tensor, x: Tensor, router_weight: Tensor, gate_up: Tensor, down: Tensor, logits: Tensor,
             top_w: Tensor, top_i: Tensor, sorted_pairs: Tensor, offsets: Tensor, counts: Tensor, act: Tensor,
             pre: Tensor, k: int, normalize: bool, grads: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    saved = moe_api.Saved(logits, top_w, top_i, sorted_pairs, offsets, counts, act, pre)
    out = moe_api._backward(dout, x, router_weight, gate_up, down, saved, k, normalize, grads)
    return tuple(_or_empty(g, x) for g in out)


# ------------------------------------------------------------------------------------------------ public functions


def _needs_grad(*tensors) -> list[bool]:
    return [torch.is_grad_enabled() and t is not None and t.requires_grad for t in tensors]


def attention(q, k, v, *, causal=True, window=None, scale=None):
    attention_api.check_args(q, k, v, causal, window, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if q.numel() == 0:
        return q.clone()
    return torch.ops.playground.attention(q, k, v, causal, window, scale)[0]


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None, causal=True,
                     window=None, scale=None):
    args = attention_varlen_api.prepare(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
                                        window, scale)
    cu_q, cu_k, max_q, max_k, scale = args
    return torch.ops.playground.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, window, scale)[0]


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    norm_api._check(x, weight, bias, eps)
    return x.clone() if x.numel() == 0 else torch.ops.playground.layer_norm(x, weight, bias, float(eps))[0]


def rms_norm(x, weight=None, eps=1e-6):
    norm_api._check(x, weight, None, eps)
    return x.clone() if x.numel() == 0 else torch.ops.playground.rms_norm(x, weight, float(eps))[0]


def partial_rope(x, positions, *, rotary_dim=None, theta=10000.0):
    rotary_dim = rope_api._check(x, positions, rotary_dim, theta)
    return torch.ops.playground.partial_rope(x, positions, rotary_dim, float(theta))


def partial_rope_qk(q, k, positions, *, rotary_dim=None, theta=10000.0):
    rotary_dim = rope_api._check(q, positions, rotary_dim, theta, name="q")
    rt.check_like("k", k, "q", q)
    if k.dim() != 4 or (k.shape[0], k.shape[2], k.shape[3]) != (q.shape[0], q.shape[2], q.shape[3]):
        raise ValueError(f"k must have shape (batch, kv_heads, seq, head_dim) = ({q.shape[0]}, *, {q.shape[2]}, "
                         f"{q.shape[3]}) like q, got {tuple(k.shape)}")
    return torch.ops.playground.partial_rope_qk(q, k, positions, rotary_dim, float(theta))


def mlp(x, w_in, b_in, w_out, b_out, *, activation="relu2"):
    mlp_api._check(x, w_in, b_in, w_out, b_out, activation)
    grads = _needs_grad(x, w_in, b_in, w_out, b_out)
    return torch.ops.playground.mlp(x, w_in, b_in, w_out, b_out, activation, grads)[0]


def squared_relu_mlp(x, w_in, b_in, w_out, b_out):
    return mlp(x, w_in, b_in, w_out, b_out, activation="relu2")


def topk_routing(logits, k=8, *, normalize=False):
    routing_api._check(logits, k)
    return torch.ops.playground.topk_routing(logits, k, bool(normalize))


def moe(x, router_weight, gate_up, down, *, k=8, normalize=False):
    moe_api._check(x, router_weight, gate_up, down, k)
    train = any(_needs_grad(x, router_weight, gate_up, down))
    return torch.ops.playground.moe(x, router_weight, gate_up, down, k, bool(normalize), train)[0]


for _public, _api in ((attention, attention_api.attention),
                      (attention_varlen, attention_varlen_api.attention_varlen), (layer_norm, norm_api.layer_norm),
                      (rms_norm, norm_api.rms_norm), (partial_rope, rope_api.partial_rope),
                      (partial_rope_qk, rope_api.partial_rope_qk), (mlp, mlp_api.mlp),
                      (squared_relu_mlp, mlp_api.squared_relu_mlp), (topk_routing, routing_api.topk_routing),
                      (moe, moe_api.moe)):
    _public.__doc__ = f"{_api.__doc__}\n\n    Runs ``torch.ops.playground`` ops (``kernels/library.py``)."
