"""Partial RoPE described for tests and sweeps: inputs, shapes drawn by hypothesis, FLOPs and bytes, tolerances,
the HF peer, bad inputs."""

from __future__ import annotations

import torch

from . import peers
from ...spec import BadInput, Case, OpSpec, call
from .api import partial_rope
from .kernel import rope_kernel
from .reference import hf_apply_factory, inv_freq, partial_rope_reference


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0):
    """dims: batch, heads, seqlen, head_dim, and rotary_dim or rotary_fraction (neither, or rotary_dim None: the
    default, full rotary); optional pos_2d (positions (batch, seq)), max_pos (positions drawn from [0, max_pos))."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    b, h, s, d = dims["batch"], dims["heads"], dims["seqlen"], dims["head_dim"]
    kwargs = {"rotary_dim": _rotary_dim(dims)} if dims.get("rotary_dim") or "rotary_fraction" in dims else {}
    x = torch.randn(b, h, s, d, generator=g)
    pos_shape = (b, s) if dims.get("pos_2d") else (s,)
    pos = torch.randint(0, dims.get("max_pos", 8192), pos_shape, generator=g)
    if not contiguous:
        # HF's layout: q a transposed view of (batch, seq, heads, head_dim), here also every other channel of a
        # wider buffer; positions every other element of a wider buffer.
        wide = torch.full((b, s, h, 2 * d), float("nan"))
        wide[..., ::2] = x.transpose(1, 2)
        x = wide[..., ::2].transpose(1, 2)
        wide_pos = torch.full(pos_shape[:-1] + (2 * s,), -1, dtype=torch.int64)
        wide_pos[..., ::2] = pos
        pos = wide_pos[..., ::2]
    x = x.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    # The frequency table is a model's init work (HF builds inv_freq once), cached by every provider: built here,
    # with the case, so that no provider's counted call pays for it, rather than whichever ran first in a process.
    inv_freq(kwargs.get("rotary_dim", d), 10000.0, x.device)
    return Case((x, pos.to(device)), kwargs)


def _dims(big):
    from hypothesis import strategies as st  # test tooling: imported only when a test asks for the strategy

    @st.composite
    def dims(draw):
        head_dim = draw(st.one_of(st.sampled_from([2, 4, 6, 16, 64, 80, 128]), st.integers(2, 40)))
        widths = st.integers(1, head_dim // 2).map(lambda r: 2 * r)  # any even width that fits
        return {
            "batch": draw(st.integers(1, 3)),
            "heads": draw(st.integers(1, 8 if big else 3)),
            "seqlen": draw(st.one_of(st.integers(1, 40), st.sampled_from([127, 1000 if big else 67]))),
            "head_dim": head_dim,
            # None: the default (full rotary), which needs an even head_dim
            "rotary_dim": draw(widths if head_dim % 2 else st.one_of(st.none(), widths)),
            "pos_2d": draw(st.booleans()),
            "max_pos": draw(st.sampled_from([1, 64, 8192, 40000])),
        }

    return dims()


def _sweep_cases(gpu):
    seqlens = [512 * 2**i for i in range(6)] if gpu else [8, 16, 32]
    head_dims = [64, 128]
    # hidden 4096 at both head dims: 64 heads of 64 (Persimmon-8B), 32 heads of 128 (Llama/OLMoE-like)
    return [{"batch": 1, "heads": (4096 if gpu else 256) // d, "seqlen": s, "head_dim": d, "rotary_fraction": f}
            for d in head_dims for f in (0.5, 1.0) for s in seqlens]


def _rotary_dim(dims):
    d = dims["head_dim"]
    return dims.get("rotary_dim") or 2 * max(1, int(d * dims.get("rotary_fraction", 1.0)) // 2)


def _flops(dims, mode):
    # 6 flops per rotated pair (4 mul, 2 add) = 3 per rotated channel; cos/sin not counted.
    per = 3 * dims["batch"] * dims["heads"] * dims["seqlen"] * _rotary_dim(dims)
    return {"fwd": per, "bwd": per, "fwd+bwd": 2 * per}[mode]


def _bytes(dims, dtype, mode):
    size = torch.finfo(dtype).bits // 8
    x = dims["batch"] * dims["heads"] * dims["seqlen"] * dims["head_dim"] * size
    pos = dims["seqlen"] * 8
    one = 2 * x + pos  # read x (dy), write y (dx)
    return {"fwd": one, "bwd": one, "fwd+bwd": 2 * one}[mode]


def _bad_inputs():
    x = torch.randn(2, 3, 5, 8)
    pos = torch.arange(5)
    return (
        BadInput("odd rotary_dim", call(x, pos, rotary_dim=3), ValueError, "rotary_dim must be even"),
        BadInput("rotary_dim > head_dim", call(x, pos, rotary_dim=10), ValueError, r"rotary_dim must be in \[2"),
        BadInput("rotary_dim 0", call(x, pos, rotary_dim=0), ValueError, r"rotary_dim must be in \[2"),
        BadInput("rotary_dim float", call(x, pos, rotary_dim=4.0), TypeError, "rotary_dim must be an int"),
        BadInput("float positions", call(x, pos.float()), TypeError, "positions must be an integer tensor"),
        BadInput("bool positions", call(x, pos > 2), TypeError, "positions must be an integer tensor"),
        BadInput("positions length", call(x, torch.arange(4)), ValueError, "positions must have shape"),
        BadInput("positions batch", call(x, torch.zeros(3, 5, dtype=torch.int64)), ValueError,
                 "positions must have shape"),
        BadInput("positions list", call(x, [0, 1, 2, 3, 4]), TypeError, "positions must be a torch.Tensor"),
        BadInput("x rank 3", call(torch.randn(3, 5, 8), pos), ValueError, "x must have rank 4"),
        BadInput("int x", call(torch.ones(2, 3, 5, 8, dtype=torch.int32), pos), TypeError, "x must be float"),
        BadInput("theta", call(x, pos, theta=0.0), ValueError, "theta must be a positive"),
    )


ROPE = OpSpec(
    name="partial_rope",
    fn=partial_rope,
    reference=partial_rope_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"batch": 2, "heads": 5, "seqlen": 37, "head_dim": 80, "rotary_dim": 40, "pos_2d": True},
    sweep_cases=_sweep_cases,
    quick_panels=({"head_dim": 64, "rotary_fraction": 0.5},),  # Persimmon-8B's
    flops=_flops,
    bytes_moved=_bytes,
    tolerance={torch.float32: 1e-5, torch.float16: 1e-3},
    grad_tolerance={torch.float32: 1e-5, torch.float16: 1e-3},
    kernels=(rope_kernel,),
    peers={"hf_apply": hf_apply_factory, "liger": peers.liger_rope},
    bad_inputs=_bad_inputs(),
    examples=(
        # Persimmon-like: half of 64 channels rotate, (batch, seq) positions, long-context angles
        {"batch": 2, "heads": 3, "seqlen": 33, "head_dim": 64, "rotary_dim": 32, "pos_2d": True, "max_pos": 40000},
        # full rotary at head_dim 128 (OLMoE), one token
        {"batch": 1, "heads": 2, "seqlen": 1, "head_dim": 128},
        # the narrowest rotation: one pair, the rest passes through
        {"batch": 1, "heads": 1, "seqlen": 19, "head_dim": 6, "rotary_dim": 2},
    ),
)

SPECS = (ROPE,)
