"""The MLP described for tests and sweeps: inputs, shapes drawn by hypothesis, FLOPs and bytes, tolerances, bad
inputs, examples."""

from __future__ import annotations

import math

import torch

from . import peers
from ...spec import BadInput, Case, OpSpec, call
from .api import mlp
from .kernel import ACTIVATIONS, gemm
from .reference import mlp_reference


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: seqlen (tokens per sequence), hidden, inner, activation; optional batch (a leading dim), bias (bool).

    Weights are scaled as a trained layer's (unit-variance pre-activations). contiguous=False: x every other
    column of a wider buffer, w_in a transposed view (unit stride along inner), w_out and the biases every other
    row/element of wider buffers.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    lead = ((dims["batch"],) if dims.get("batch") else ()) + (dims["seqlen"],)
    hidden, inner = dims["hidden"], dims["inner"]
    x = torch.randn(*lead, hidden, generator=g)
    w_in = torch.randn(inner, hidden, generator=g) / math.sqrt(hidden)
    w_out = torch.randn(hidden, inner, generator=g) / math.sqrt(inner)
    b_in = 0.5 * torch.randn(inner, generator=g)
    b_out = 0.5 * torch.randn(hidden, generator=g)
    if not contiguous:
        wide = torch.full((*lead, 2 * hidden), float("nan"))
        wide[..., ::2] = x
        x = wide[..., ::2]
        w_in = w_in.t().contiguous().t()
        w_out = torch.stack((w_out, torch.full_like(w_out, float("nan"))), dim=1).view(2 * hidden, inner)[::2]
        b_in = torch.stack((b_in, torch.full_like(b_in, float("nan"))), dim=1).view(-1)[::2]
        b_out = torch.stack((b_out, torch.full_like(b_out, float("nan"))), dim=1).view(-1)[::2]

    def prep(t):
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    bias = dims.get("bias", True)
    args = (prep(x), prep(w_in), prep(b_in) if bias else None, prep(w_out), prep(b_out) if bias else None)
    return Case(args, {"activation": dims.get("activation", "relu2")})


def _dims(big):
    from hypothesis import strategies as st  # test tooling: imported only when a test asks for the strategy

    tokens = st.one_of(st.integers(1, 40), st.sampled_from([67, 130, 1000] if big else [47, 67]))
    width = st.one_of(st.integers(1, 48), st.sampled_from([97, 300, 1000] if big else [65, 97, 100]))
    return st.fixed_dictionaries(
        {"seqlen": tokens, "hidden": width, "inner": width, "activation": st.sampled_from(sorted(ACTIVATIONS))},
        optional={"batch": st.integers(1, 3), "bias": st.booleans()},
    )


def _sweep_cases(gpu):
    # tokens = seqlen (batch 1); Persimmon-8B's MLP and GPT-2 small's (hidden 768, inner 3072)
    if not gpu:
        return [{"seqlen": s, "hidden": 32, "inner": 96, "activation": "relu2"} for s in (8, 16, 32)]
    seqlens = [512 * 2**i for i in range(5)]
    shapes = [(4096, 16384), (768, 3072)]
    return [{"seqlen": s, "hidden": h, "inner": i, "activation": "relu2"} for h, i in shapes for s in seqlens]


def _tokens(dims):
    return dims.get("batch", 1) * dims["seqlen"]


def _flops(dims, mode):
    one_gemm = 2 * _tokens(dims) * dims["hidden"] * dims["inner"]
    return {"fwd": 2 * one_gemm, "bwd": 4 * one_gemm, "fwd+bwd": 6 * one_gemm}[mode]


def _bytes(dims, dtype, mode):
    # the least traffic: activations in and out, both weight matrices (the intermediate could stay on chip)
    size = torch.finfo(dtype).bits // 8
    act = _tokens(dims) * dims["hidden"] * size
    weights = 2 * dims["hidden"] * dims["inner"] * size
    fwd = 2 * act + weights  # x in, y out, weights in
    bwd = 3 * act + 2 * weights  # x, dy in, dx out; weights in, their grads out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _bad_inputs():
    x, w_in, b_in, w_out, b_out = torch.randn(5, 8), torch.randn(12, 8), torch.randn(12), torch.randn(8, 12), \
        torch.randn(8)
    return (
        BadInput("int x", call(x.int(), w_in, b_in, w_out, b_out), TypeError, "x must be float"),
        BadInput("x not a tensor", call([1.0], w_in, b_in, w_out, b_out), TypeError, "x must be a torch.Tensor"),
        BadInput("w_in hidden", call(x, torch.randn(12, 7), b_in, w_out, b_out), ValueError,
                 r"w_in must have shape \(inner, hidden\)"),
        BadInput("w_in rank", call(x, torch.randn(12), b_in, w_out, b_out), ValueError, "w_in must have rank 2"),
        BadInput("w_in dtype", call(x, w_in.half(), b_in, w_out, b_out), TypeError, "w_in has dtype"),
        BadInput("w_out inner", call(x, w_in, b_in, torch.randn(8, 11), b_out), ValueError,
                 r"w_out must have shape \(hidden, inner\)"),
        BadInput("w_out int", call(x, w_in, b_in, w_out.long(), b_out), TypeError, "w_out must be float"),
        BadInput("b_in length", call(x, w_in, torch.randn(11), w_out, b_out), ValueError, "b_in must have shape"),
        BadInput("b_out length", call(x, w_in, b_in, w_out, torch.randn(12)), ValueError, "b_out must have shape"),
        BadInput("b_out dtype", call(x, w_in, b_in, w_out, b_out.double()), TypeError, "b_out must be float"),
        BadInput("activation", call(x, w_in, b_in, w_out, b_out, activation="swish"), ValueError,
                 "activation must be one of"),
    )


MLP = OpSpec(
    name="mlp",
    fn=mlp,
    reference=mlp_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"seqlen": 67, "hidden": 71, "inner": 97, "activation": "relu2"},
    sweep_cases=_sweep_cases,
    quick_panels=({"hidden": 4096},),  # Persimmon-8B's
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-5, torch.float16: 3e-3},
    grad_tolerance={torch.float32: 1e-5, torch.float16: 3e-3},
    kernels=(gemm,),
    peers={"liger": peers.liger_relu2_mlp},
    bad_inputs=_bad_inputs(),
    examples=(
        {"seqlen": 1, "hidden": 33, "inner": 70, "activation": "gelu_tanh", "bias": False},  # one token
        {"batch": 3, "seqlen": 7, "hidden": 100, "inner": 65, "activation": "relu"},  # leading dims
        {"seqlen": 70, "hidden": 97, "inner": 100, "activation": "relu2"},  # 3 K steps of 32 in fp32
    ),
)

SPECS = (MLP,)
