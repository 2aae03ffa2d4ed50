"""What every op folder's custom ops share: the registration, and the stand-ins of the outputs an op does not
produce. Each op's ``api.py`` registers its own ops here (``playground::<name>``); nothing here names an op.

An op is a ``torch.library.custom_op`` in the namespace ``playground`` (``torch.compile`` traces through it with
``fullgraph=True``: no graph break), with a fake (meta) implementation giving exactly the real outputs' shapes,
dtypes and strides, and its autograd formula registered with ``register_autograd``; its backward is an op too (a
compiled graph's backward calls it). An op returns its result first, then what its backward reads, marked
non-differentiable; the public function returns the result alone.

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

import torch
from torch import Tensor

from . import _runtime as rt

IMPLEMENTATIONS: dict[str, object] = {}  # "playground::<op>" -> its Python implementation (kernels.count runs it)


def custom_op(name, fake, setup_context=None, backward=None):
    """Decorator: register the function as ``playground::<name>`` with its fake and (optional) autograd formula,
    and its Python implementation in :data:`IMPLEMENTATIONS` (the counters run it to count what it launches)."""

    def register(fn):
        op = torch.library.custom_op(f"playground::{name}", mutates_args=())(fn)
        op.register_fake(fake)
        if backward is not None:
            op.register_autograd(backward, setup_context=setup_context)
        IMPLEMENTATIONS[f"playground::{name}"] = fn
        return op

    return register


def extras_are_not_differentiable(ctx, extras) -> None:
    """An op's outputs after the first are for its backward: no gradient flows into them, and none is made up
    (an unused output's gradient stays None, not a zero tensor)."""
    ctx.mark_non_differentiable(*extras)
    ctx.set_materialize_grads(False)


def placeholder(like: Tensor) -> Tensor:
    """The stand-in for a tensor an op does not produce (a gradient nobody asked for, ``h`` kept for no one): the
    schema's, not the op's work, so uncounted."""
    with rt.uncounted():
        return like.new_empty(0)


def or_placeholder(t, like):
    return placeholder(like) if t is None else t


def empty_if(flag, shape, like, dtype=None):
    """A fake output of ``shape`` when ``flag``, else a placeholder (fake implementations)."""
    return like.new_empty(shape, dtype=dtype) if flag else like.new_empty(0)


def needs_grad(*tensors) -> list[bool]:
    return [torch.is_grad_enabled() and t is not None and t.requires_grad for t in tensors]
