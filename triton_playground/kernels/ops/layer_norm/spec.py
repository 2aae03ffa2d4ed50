"""LayerNorm and RMSNorm described for tests and sweeps: inputs, shapes drawn by hypothesis, FLOPs and bytes,
tolerances, bad inputs."""

from __future__ import annotations

import functools

import torch

from . import peers
from ...spec import BadInput, Case, OpSpec, call
from .api import layer_norm, rms_norm
from .kernel import norm_bwd, norm_fwd
from .reference import layer_norm_reference, rms_norm_reference


def _make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0, rms=False):
    """dims: rows (sweeps: seqlen), hidden, and optionally offset (added to x: rows with mean 1e4), affine."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows, hidden = dims.get("rows", dims.get("seqlen")), dims["hidden"]
    x = torch.randn(rows, hidden, generator=g) + dims.get("offset", 0.0)
    if not contiguous:  # every other column of a wider buffer, rows reversed: non-unit strides on both axes
        wide = torch.full((rows, 2 * hidden), float("nan"))
        wide[:, ::2] = x
        x = wide.flip(0)[:, ::2].flip(0)
    x = x.to(device=device, dtype=dtype)
    args = [x.requires_grad_(requires_grad)]
    if dims.get("affine", True):
        args.append((1 + 0.5 * torch.randn(hidden, generator=g)).to(device, dtype).requires_grad_(requires_grad))
        if not rms:
            args.append((0.5 * torch.randn(hidden, generator=g)).to(device, dtype).requires_grad_(requires_grad))
    return Case(tuple(args))


def _dims(big):
    from hypothesis import strategies as st  # test tooling: imported only when a test asks for the strategy

    hidden = st.one_of(st.integers(1, 64), st.sampled_from([127, 768, 1000, 4096, 9000 if big else 8193]))
    return st.fixed_dictionaries(
        {"rows": st.integers(1, 64 if big else 9), "hidden": hidden},
        optional={"offset": st.sampled_from([0.0, 1e4]), "affine": st.booleans()},
    )


def _sweep_cases(gpu):
    seqlens = [512 * 2**i for i in range(6)] if gpu else [8, 16, 32]
    hiddens = [1024, 4096, 8192] if gpu else [256]
    return [{"seqlen": s, "hidden": h} for h in hiddens for s in seqlens]


def _bytes(dims, dtype, mode, n_params):
    size = torch.finfo(dtype).bits // 8
    act = dims.get("rows", dims.get("seqlen")) * dims["hidden"] * size
    params = n_params * dims["hidden"] * size
    fwd = 2 * act + params  # read x, write y
    bwd = 3 * act + 2 * params  # read x, dy; write dx; weight in, grads out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _flops(dims, mode):
    per = {"fwd": 8, "bwd": 14, "fwd+bwd": 22}[mode]
    return per * dims.get("rows", dims.get("seqlen")) * dims["hidden"]


def _tiles_per_program_strata(grid, *, n_rows, BLOCK_M, **_):
    """Our norm kernels' persistent grids: program pid walks row tiles pid, pid + programs, ..., so the first
    programs may walk one tile more than the rest, and some none (1024 rows in 8-row tiles over 132 programs: 128
    programs of one tile, 4 idle, which still store their zero partial rows). Programs by their tiles, for the
    counters."""
    import numpy as np

    pid = np.arange(grid[0])
    row_tiles = -(-n_rows // BLOCK_M)
    tiles = np.maximum(0, -(-(row_tiles - pid) // grid[0]))  # ceil((row_tiles - pid) / programs), or none
    return [pid[tiles == t] for t in np.unique(tiles)]


_COUNT_STRATA = {**peers.LIGER_NORM_STRATA, "norm_fwd": _tiles_per_program_strata,
                 "norm_bwd": _tiles_per_program_strata}


def _bad_inputs(fn, rms):
    x = torch.randn(3, 8)
    bad = [
        BadInput("int x", call(torch.ones(3, 8, dtype=torch.int32)), TypeError, "x must be float"),
        BadInput("weight shape", call(x, torch.ones(7)), ValueError, "weight must have shape"),
        BadInput("weight dtype", call(x, torch.ones(8, dtype=torch.float16)), TypeError, "weight has dtype"),
        BadInput("not a tensor", call([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        BadInput("eps zero", call(x, None, **({"eps": 0.0})), ValueError, "eps must be a positive"),
    ]
    if not rms:
        bad.append(BadInput("bias shape", call(x, torch.ones(8), torch.ones(3, 8)), ValueError, "bias must have"))
    if torch.cuda.is_available():
        bad.append(BadInput("devices", lambda: Case((x.cuda(), torch.ones(8))), ValueError, "weight is on cpu"))
    return tuple(bad)


# Rows wider than one tile (the looped path) with mean 1e4; one-wide and two-wide rows (a gradient that is zero
# up to rounding); many rows with the weight but no bias.
_EXAMPLES = (
    {"rows": 3, "hidden": 8193, "offset": 1e4},
    {"rows": 2, "hidden": 1},
    {"rows": 5, "hidden": 2},
    {"rows": 33, "hidden": 300, "offset": 1e4},
)
_TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
_GRAD_TOL = {torch.float32: 1e-4, torch.float16: 3e-3}

LAYER_NORM = OpSpec(
    name="layer_norm",
    fn=layer_norm,
    reference=layer_norm_reference,
    make_case=_make_case,
    dims=_dims,
    config_dims={"rows": 19, "hidden": 37},
    sweep_cases=_sweep_cases,
    quick_panels=({"hidden": 4096},),
    flops=_flops,
    bytes_moved=functools.partial(_bytes, n_params=2),
    tolerance=_TOL,
    grad_tolerance=_GRAD_TOL,
    kernels=(norm_fwd, norm_bwd),
    peers={"liger": peers.liger_layer_norm},
    count_strata=_COUNT_STRATA,
    bad_inputs=_bad_inputs(layer_norm, rms=False),
    examples=_EXAMPLES,
)

RMS_NORM = OpSpec(
    name="rms_norm",
    fn=rms_norm,
    reference=rms_norm_reference,
    make_case=functools.partial(_make_case, rms=True),
    dims=_dims,
    config_dims={"rows": 19, "hidden": 37},
    sweep_cases=_sweep_cases,
    quick_panels=({"hidden": 4096},),
    flops=_flops,
    bytes_moved=functools.partial(_bytes, n_params=1),
    tolerance=_TOL,
    grad_tolerance=_GRAD_TOL,
    kernels=(norm_fwd, norm_bwd),
    peers={"liger": peers.liger_rms_norm},
    count_strata=_COUNT_STRATA,
    bad_inputs=_bad_inputs(rms_norm, rms=True),
    examples=_EXAMPLES,
)

SPECS = (LAYER_NORM, RMS_NORM)
