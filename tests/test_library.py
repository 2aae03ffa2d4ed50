"""The ops as ``torch.library`` custom ops (each op folder's ``api.py`` registers its own with
``kernels/_custom_op.py``): ``opcheck`` on every op (forward and backward ops, fp32 on the kernels' device), the
public functions equal to their specs' api.py functions (outputs, gradients, errors, signatures), ``kernels.count``
counting the kernels an op launches (not the op), and ``torch.compile(fullgraph=True)`` through the ops (a
training step) and through each model family's forward.

The models compile with torch.compile's default backend, Inductor (on the CPU it generates C++ around our ops,
which it calls as opaque nodes): the real path, 10-40 s a model here (tiny configs; less with a warm Inductor
cache). The training step uses aot_eager (see it).
"""

from __future__ import annotations

import inspect

import pytest
import torch

from triton_playground import kernels
from triton_playground import models
from triton_playground.kernels import _runtime as rt
from triton_playground.kernels._custom_op import IMPLEMENTATIONS

DEV = rt.DEVICE
OPS = ("attention", "attention_backward", "attention_varlen", "attention_varlen_backward", "layer_norm", "rms_norm",
       "norm_backward", "partial_rope", "partial_rope_qk", "mlp", "mlp_backward", "topk_routing",
       "topk_routing_backward", "moe", "moe_backward")


def _randn(*shape, grad=False, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed + len(shape) + shape[-1])
    return (scale * torch.randn(*shape, generator=g)).to(DEV).requires_grad_(grad)


def _op_inputs(name):
    """Representative fp32 arguments of ``torch.ops.playground.<name>``: small, odd sizes, strided views, GQA."""
    q = _randn(1, 6, 2, 16).transpose(1, 2).requires_grad_()  # (b, h, s, d) as a transposed view
    k, v = _randn(1, 2, 9, 16, grad=True, seed=1), _randn(1, 2, 9, 16, grad=True, seed=2)
    x, w, b = _randn(3, 5, 24, grad=True), _randn(24, grad=True, seed=3), _randn(24, grad=True, seed=4)
    w_in, b_in = _randn(40, 24, grad=True, scale=0.2), _randn(40, grad=True, seed=5)
    w_out, b_out = _randn(24, 40, grad=True, scale=0.2, seed=6), _randn(24, grad=True, seed=7)
    logits = _randn(2, 7, 12, grad=True)
    positions = torch.arange(3, 9, device=DEV)
    if name == "attention":
        return (q, k, v, True, 4, 0.25)
    if name == "attention_backward":
        out, lse = torch.ops.playground.attention(q, k, v, True, 4, 0.25)
        return (torch.randn_like(out), q, k, v, out.detach(), lse, True, 4, 0.25)
    if name.startswith("attention_varlen"):  # 3 sequences (one empty) packed, q a strided slice, GQA
        cu_q = torch.tensor([0, 3, 3, 7], dtype=torch.int32, device=DEV)
        cu_k = torch.tensor([0, 5, 6, 13], dtype=torch.int32, device=DEV)
        qp = _randn(7, 8, 16, seed=9)[:, :6].requires_grad_()
        kp, vp = _randn(13, 2, 16, grad=True, seed=10), _randn(13, 2, 16, grad=True, seed=11)
        args = (qp, kp, vp, cu_q, cu_k, 4, 7, True, 3, 0.25)
        if name == "attention_varlen":
            return args
        out, lse = torch.ops.playground.attention_varlen(*args)
        return (torch.randn_like(out), qp, kp, vp, out.detach(), lse, cu_q, cu_k, 4, 7, True, 3, 0.25)
    if name in ("layer_norm", "rms_norm"):
        return (x, w, b, 1e-5) if name == "layer_norm" else (x, w, 1e-5)
    if name == "norm_backward":
        y, mean, rstd = torch.ops.playground.layer_norm(x, w, b, 1e-5)
        return (torch.randn_like(y), x, w, b, mean, rstd, [True, True, True])
    if name == "partial_rope":
        return (_randn(2, 3, 6, 20, grad=True), positions, 10, 25000.0)
    if name == "partial_rope_qk":
        return (_randn(2, 4, 6, 16, grad=True), _randn(2, 2, 6, 16, grad=True, seed=8), positions, 16, 10000.0)
    if name == "mlp":
        return (x, w_in, b_in, w_out, b_out, "gelu_tanh", [True] * 5)
    if name == "mlp_backward":
        y, a, h = torch.ops.playground.mlp(x, w_in, b_in, w_out, b_out, "relu2", [True] * 5)
        return (torch.randn_like(y), x, w_in, w_out, a, h, True, True, "relu2", [True] * 5)
    if name == "topk_routing":
        return (logits, 4, True)
    if name == "topk_routing_backward":
        weights, ids = torch.ops.playground.topk_routing(logits, 4, False)
        return (torch.randn_like(weights), logits, ids, False)
    moe_args = (_randn(7, 24, grad=True), _randn(8, 24, grad=True, scale=0.2), _randn(8, 32, 24, grad=True, scale=0.2),
                _randn(8, 24, 16, grad=True, scale=0.2), 3, True)
    if name == "moe_backward":
        out, *saved = torch.ops.playground.moe(*moe_args, True)
        return (torch.randn_like(out), *moe_args[:4], *saved, 3, True, [True, True, True, True])
    assert name == "moe"
    return (*moe_args, True)


def test_every_op_is_registered():
    assert sorted(IMPLEMENTATIONS) == sorted(f"playground::{name}" for name in OPS)
    for name in OPS:
        assert isinstance(getattr(torch.ops.playground, name).default, torch._ops.OpOverload)


@pytest.mark.parametrize("name", OPS)
def test_opcheck(name):
    """Schema, autograd registration, fake (meta) implementation against the real one (shapes, dtypes, strides),
    and AOTAutograd with dynamic shapes, forward and backward, equal to eager."""
    args = _op_inputs(name)
    if name.endswith("_backward"):  # backward ops have no autograd formula: their inputs need none
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(getattr(torch.ops.playground, name).default, args)


# ------------------------------------------------------------------------------------------------ the public functions


@pytest.mark.parametrize("name", list(kernels.OPS))
def test_public_function_is_the_registered_op(name):
    """``kernels.<op>`` is the function the registry's spec runs (one function, no twin), it runs through its
    ``torch.ops.playground`` op (the autograd graph's node is the op's, not a Python Function's), and each of the
    spec's bad inputs raises the error it names."""
    spec = kernels.OPS[name]
    public = getattr(kernels, name)
    assert public is spec.fn
    if "bwd" in spec.modes:
        case = spec.make_case(spec.config_dims, torch.float32, DEV, contiguous=False, requires_grad=True, seed=3)
        out = public(*case.args, **case.kwargs)
        node = (out if isinstance(out, torch.Tensor) else out[0]).grad_fn
        while node is not None and "playground" not in type(node).__name__.lower() + node.name().lower():
            node = node.next_functions[0][0] if node.next_functions else None
        assert node is not None, f"{name}: no torch.ops.playground node in its autograd graph"
    for bad in spec.bad_inputs:
        case = bad.make()
        with pytest.raises(bad.error, match=bad.match):
            public(*case.args, **case.kwargs)


def test_counts_are_those_of_the_kernels():
    """kernels.count() sees inside a custom op: the kernels it launches, once each way, and no launch for the op
    itself."""
    x, w, b = _randn(4, 32, grad=True), _randn(32, grad=True), _randn(32, grad=True)
    with kernels.count() as c:
        kernels.layer_norm(x, w, b).sum().backward()
    launches = {name: k.launches for name, k in c.by_kernel().items()}
    assert launches.get("norm_fwd") == 1 and launches.get("norm_bwd") == 1, launches
    assert not any("playground" in name for name in launches), launches


# ------------------------------------------------------------------------------------------------ torch.compile


def _block(x, w_ln, w_in, w_out, positions):
    """A pre-LN block of the ops: RMSNorm -> q, k, v -> RoPE -> windowed GQA attention -> residual -> MLP."""
    b, s, d = x.shape
    h = kernels.rms_norm(x, w_ln)
    heads = h.view(b, s, 2, d // 2).transpose(1, 2)  # (b, 2, s, d/2): q; one head of it for k, the other for v
    q, k = kernels.partial_rope_qk(heads, heads[:, :1] * 0.5, positions, rotary_dim=d // 4)
    y = kernels.attention(q, k, heads[:, 1:], window=5).transpose(1, 2).reshape(b, s, d)
    x = x + y
    weights, _ = kernels.topk_routing(kernels.layer_norm(x), 2)
    return x + kernels.mlp(x, w_in, None, w_out, None, activation="gelu_tanh") * weights.sum(-1, keepdim=True)


def test_compile_fullgraph_training_step():
    """A block of every differentiable op compiles with no graph break; forward and gradients equal eager's.
    Backend aot_eager: the same Dynamo + AOTAutograd trace (fake implementations, autograd formulas, backward ops)
    without Inductor's codegen of the glue, which costs ~30 s more here for nothing the model tests lack."""
    torch._dynamo.reset()
    args = (_randn(2, 9, 32, grad=True), _randn(32, grad=True, seed=1), _randn(48, 32, grad=True, scale=0.2),
            _randn(32, 48, grad=True, scale=0.2, seed=2), torch.arange(9, device=DEV))
    compiled = torch.compile(_block, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (_block, compiled):
        out = fn(*args)
        out.square().sum().backward()
        results.append([out.detach()] + [a.grad.clone() for a in args if a.is_floating_point()])
        for a in args:
            a.grad = None
    for ours, ref in zip(*results[::-1]):
        assert ((ours - ref).norm() / ref.norm()).item() < 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from tests.test_models import Built

    root = str(tmp_path_factory.mktemp("compile"))
    return lambda name: Built(name, root)


def _first_cases():
    from tests.test_models import FIRST

    return FIRST


@pytest.mark.parametrize("name", _first_cases())
def test_compiled_model_matches_eager(checkpoints, name):
    """torch.compile(model, fullgraph=True) of each family's forward (tiny config) runs and matches eager (fp32)."""
    case = checkpoints(name)
    model = models.from_pretrained(case.path)
    ids = case.ids(1).to(DEV)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    eager, out = model(ids), compiled(ids)
    assert ((out - eager).norm() / eager.norm()).item() < 1e-5
