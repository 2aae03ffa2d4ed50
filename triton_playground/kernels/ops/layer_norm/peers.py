"""LayerNorm's and RMSNorm's peers, for the sweeps (``spec.py``'s ``peers``): Liger-Kernel's
``LigerLayerNormFunction`` / ``LigerRMSNormFunction`` (casting mode "llama", as our reference: normalise in fp32,
cast, then scale). Same semantics. The shared import guard and work-arounds: ``kernels/peer_libs.py``.
"""

from __future__ import annotations

import torch

from ... import _runtime as rt
from ...peer_libs import liger_norm_module, scalar

DESCRIPTIONS = {
    "layer_norm": {"liger": "Liger LigerLayerNormFunction: same op"},
    "rms_norm": {"liger": "Liger LigerRMSNormFunction (casting mode llama): same op"},
}


def _rows_per_program_strata(grid, *, n_rows, rows_per_program, **_):
    """Liger's norm backwards run one program an SM, each over ``rows_per_program`` rows; the last ones hold fewer
    rows or none (1024 rows on 132 SMs: 128 programs of 8 rows, 4 idle). Programs by their rows, for the counters."""
    import numpy as np

    pid = np.arange(grid[0])
    rows = np.clip(n_rows - pid * rows_per_program, 0, rows_per_program)
    return [pid[rows == r] for r in np.unique(rows)]


LIGER_NORM_STRATA = dict.fromkeys(("_rms_norm_backward_kernel", "_layer_norm_backward_kernel"),
                                  _rows_per_program_strata)


# Liger's norm backwards size their grid, and the fp32 partial dW/dB rows each program writes, by the device's SM
# count, and take 1 on any device that is not a GPU: counted that way, one program would walk every row and the
# partial sums would shrink to one row. Without a GPU the adapters below launch Liger's own backward kernels the
# way its wrapper does (liger_kernel/ops/layer_norm.py ``layer_norm_backward``, rms_norm.py
# ``rms_norm_backward``), with the SM count of the GPU being modeled (``rt.num_sms()``: 132 while an H100 is
# counted). On a GPU, Liger's Functions run unchanged.


def _liger_layer_norm_function(mod):
    if not (rt.INTERPRET or rt.COMPILE_ONLY):
        return mod.LigerLayerNormFunction
    from liger_kernel.ops.utils import calculate_settings

    class SizedBackward(mod.LigerLayerNormFunction):
        @staticmethod
        def backward(ctx, dY):
            X, W, B, Mean, RSTD = ctx.saved_tensors
            compute_dw, compute_db = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
            shape = dY.shape
            dY = dY.contiguous().view(-1, shape[-1])
            n_rows, n_cols = dY.shape
            sms = rt.num_sms()
            _DW = torch.empty((sms, n_cols), dtype=torch.float32, device=W.device) if compute_dw else None
            _DB = torch.empty((sms, n_cols), dtype=torch.float32, device=W.device) if compute_db else None
            BLOCK_SIZE, num_warps = calculate_settings(n_cols)
            DX = torch.empty((n_rows, n_cols), dtype=X.dtype, device=X.device)
            mod._layer_norm_backward_kernel[(sms,)](
                X, X.stride(0), W, Mean, Mean.stride(0), RSTD, RSTD.stride(0), DX, DX.stride(0),
                _DW, _DW.stride(0) if compute_dw else 0, _DB, _DB.stride(0) if compute_db else 0, dY, dY.stride(0),
                n_rows, n_cols, rows_per_program=-(-n_rows // sms), BLOCK_SIZE=BLOCK_SIZE, COMPUTE_DW=compute_dw,
                COMPUTE_DB=compute_db, num_warps=num_warps)
            DW = _DW.sum(dim=0).to(W.dtype) if compute_dw else None
            DB = _DB.sum(dim=0).to(B.dtype) if compute_db else None
            return DX.view(*shape), DW, DB, None

    return SizedBackward


def liger_layer_norm():
    mod = liger_norm_module("liger_kernel.ops.layer_norm")
    if mod is None:
        return None
    function = _liger_layer_norm_function(mod)

    def liger_layer_norm(x, weight=None, bias=None, eps=1e-5):
        hidden = x.shape[-1]
        weight = torch.ones(hidden, dtype=x.dtype, device=x.device) if weight is None else weight
        bias = torch.zeros(hidden, dtype=x.dtype, device=x.device) if bias is None else bias
        return function.apply(x, weight, bias, scalar(eps))

    return liger_layer_norm


def _liger_rms_norm_function(mod):
    if not (rt.INTERPRET or rt.COMPILE_ONLY):
        return mod.LigerRMSNormFunction
    from liger_kernel.ops.utils import torch_to_triton_dtype

    class SizedBackward(mod.LigerRMSNormFunction):
        @staticmethod
        def backward(ctx, dY):
            X, W, RSTD = ctx.saved_tensors
            shape = dY.shape
            dY = dY.contiguous().view(-1, shape[-1])
            n_rows, n_cols = dY.shape
            if not (ctx.BLOCK_SIZE > 256 or n_rows < 4096 * 8 or ctx.row_mode):
                raise NotImplementedError("Liger's multi-row RMSNorm backward (hidden <= 256, 32768+ rows) is not "
                                          "adapted for the CPU")
            sms = rt.num_sms()
            _dW = torch.empty((sms, n_cols), dtype=torch.float32, device=W.device)
            dX = dY if ctx.in_place else torch.zeros_like(dY)
            mod._rms_norm_backward_kernel[(sms,)](
                dY, dY.stride(0), dX, dX.stride(0), X, X.stride(0), torch_to_triton_dtype[X.dtype], W, W.stride(0),
                RSTD, RSTD.stride(0), _dW, _dW.stride(0), n_rows, n_cols, ctx.offset, -(-n_rows // sms),
                ctx.casting_mode, elementwise_affine=True, BLOCK_SIZE=ctx.BLOCK_SIZE, COMPUTE_DW=True,
                num_warps=ctx.num_warps)
            return dX.view(*shape), _dW.sum(dim=0).to(W.dtype), None, None, None, None, None

    return SizedBackward


def liger_rms_norm():
    mod = liger_norm_module("liger_kernel.ops.rms_norm")
    if mod is None:
        return None
    function = _liger_rms_norm_function(mod)

    def liger_rms_norm(x, weight=None, eps=1e-6):
        weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device) if weight is None else weight
        # offset 0, casting "llama" (our reference's order: normalise in fp32, cast, scale), dx written over dy
        # (Liger's default, in_place=True: no zero-filled dx buffer)
        return function.apply(x, weight, scalar(eps), scalar(0.0), "llama", True, None)

    return liger_rms_norm
