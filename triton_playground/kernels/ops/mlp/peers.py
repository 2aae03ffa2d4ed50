"""The MLP's peer, for the sweeps (``spec.py``'s ``peers``). Ours: linear, squared ReLU, linear, with biases.
Liger's ``relu_squared`` kernel is only the activation; the two linears around it are torch (cuBLAS on a GPU, the
aten counter here). Liger's own MLP (``LigerMLPFunction``) is a gated SwiGLU MLP without biases: a different
function, not compared. The shared import guard: ``kernels/peer_libs.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _runtime as rt
from ...peer_libs import module
from ...spec import NotComparable

DESCRIPTIONS = {
    "mlp": {"liger": "Liger relu_squared kernel for the activation only; both linears are torch (cuBLAS)"},
}


class _HalfLinearOnCPU(torch.autograd.Function):
    """``F.linear`` of fp16 tensors under the interpreter, counted as the fp16 op and computed in fp32.

    The MLP peer's two linears are torch; the modeled sweep counts them at the real sizes on real tensors (Liger's
    kernel between them needs real memory), and the CPU multiplies fp16 some 5x slower than fp32: minutes a GEMM
    of Persimmon's size. The aten counter needs shapes only, so the fp16 op (and, in the backward, the fp16 ops
    autograd runs for it) is counted on fake tensors, and the values are computed in fp32 outside the count and
    rounded to fp16, as a GPU's fp32-accumulating GEMM gives them."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w, b)
        fakes = _fakes(x, w, b)
        F.linear(*fakes)  # counted
        with rt.uncounted():
            return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, w, b = ctx.saved_tensors
        fx, fw, fb, fdy = _fakes(x, w, b, dy)
        with torch.enable_grad():
            inputs = [t.requires_grad_() for t in (fx, fw, fb) if t is not None]
            with rt.uncounted():  # the graph to differentiate: the forward was counted in forward()
                out = F.linear(fx, fw, fb)
            torch.autograd.grad(out, inputs, fdy)  # counted: the ops autograd runs for a linear's backward
        with rt.uncounted():
            dyf = dy.float()
            dx = (dyf @ w.float()).to(x.dtype)
            dw = (dyf.reshape(-1, dy.shape[-1]).t() @ x.float().reshape(-1, x.shape[-1])).to(w.dtype)
            db = None if b is None else dyf.reshape(-1, dy.shape[-1]).sum(0).to(b.dtype)
        return dx, dw, db


def _fakes(*tensors):
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    return [None if t is None else mode.from_tensor(t.detach()) for t in tensors]


def _linear(x, w, b):
    if rt.INTERPRET and x.dtype == torch.float16 and x.device.type == "cpu" and not _is_fake(x):
        return _HalfLinearOnCPU.apply(x, w, b)
    return F.linear(x, w, b)


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def liger_relu2_mlp():
    mod = module("liger_kernel.ops.relu_squared")
    if mod is None:
        return None

    def liger_relu2_mlp(x, w_in, b_in, w_out, b_out, *, activation="relu2"):
        if activation != "relu2":
            raise NotComparable(f"Liger has relu_squared, not {activation!r}")
        h = _linear(x, w_in, b_in)
        return _linear(mod.LigerReLUSquaredFunction.apply(h), w_out, b_out)

    return liger_relu2_mlp
