"""The Triton kernel libraries a user of this project would otherwise pick, as sweep peers of our ops.

Liger-Kernel (``liger-kernel==0.8.5``) and flash-linear-attention (``fla-core==0.6.0``), pinned in the ``peers``
extra (``pip install .[peers]``; ``scripts/setup.sh`` installs it). Each factory below answers a callable with
our op's signature (``OpSpec.peers``), or None when its library is not installed (the sweep lists it once as
unavailable). The callables are thin adapters: they call the library's own autograd Functions, whose Triton
kernels then run wherever ours do (a GPU, the interpreter, compile-only mode), so the counters, the H100 model
and the static report see their kernels exactly as they see ours. No kernel code is copied here.

One file for both libraries, not a ``peers.py`` per op folder: the adapters share the import guard, the
interpreter work-arounds and the descriptions below, and what they adapt is another library, not our op.

What stands against what (``DESCRIPTIONS``, also in the README):

* ``layer_norm`` / ``rms_norm``: ``LigerLayerNormFunction`` / ``LigerRMSNormFunction`` (casting mode "llama",
  as our reference: normalise in fp32, cast, then scale). Same semantics.
* ``partial_rope``: ``LigerRopeFunction`` with ``rotary_dim`` (Liger 0.8.5 rotates the leading ``rotary_dim``
  channels, as ours), at both rotary fractions of the sweep. Liger takes cos/sin tables (a model computes them
  once per forward for all layers), so the adapter builds them outside the count; ours computes them in the
  kernel from the positions. Liger rotates a q and a k in one launch and cannot be given no k: the adapter
  passes a one-head k, 1/heads extra work in Liger's rows. Liger works in (batch, seq, heads, head_dim) memory:
  our (batch, heads, seq, head_dim) input is copied into that layout by its wrapper (counted, its traffic).
* ``mlp`` (ours: linear, squared ReLU, linear, with biases): Liger's ``relu_squared`` kernel is only the
  activation; the two linears around it are torch (cuBLAS on a GPU, the aten counter here). Liger's own MLP
  (``LigerMLPFunction``) is a gated SwiGLU MLP without biases: a different function, not compared.
* ``moe`` (ours: router, top-k, gather, gate/up GEMM, SwiGLU, down GEMM, weighted sum): Liger's ``fused_moe``
  (``LigerFusedMoEFunction``) is everything after the top-k; the router GEMM, softmax and top-k are torch, as in
  our reference. Same weight layouts (gate_up (E, 2I, H), gate first; down (E, H, I)).
* ``attention``: FLA's ``parallel_attn`` (causal softmax attention, GQA). fla-core 0.6.0 has a sliding window
  (``window_size``: keys ``[i - W + 1, i]``, ours' definition), so windowed cases are compared too. It works in
  (batch, seq, heads, head_dim) memory: our layout is copied in and out (counted). It is causal only and needs
  q_len == kv_len: other cases raise :class:`kernels.spec.NotComparable` (no row).

Under the interpreter and in compile-only mode there is no driver to benchmark with, so Liger's autotuned MoE
kernels are pinned to the one config Liger itself pins with ``LIGER_FUSED_MOE_AUTOTUNE=0`` (set here, before
Liger is imported); on a GPU they autotune as usual.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import warnings

import torch
import torch.nn.functional as F

from . import _runtime as rt
from .spec import NotComparable, plateau_and_rest

PINNED = {"liger-kernel": "0.8.5", "fla-core": "0.6.0"}

if rt.INTERPRET or rt.COMPILE_ONLY:
    os.environ.setdefault("LIGER_FUSED_MOE_AUTOTUNE", "0")

# Liger's routing kernels: later launches read their outputs, so the counters run them whole (OpSpec.count_exact),
# or, the scatter (too slow to run whole under the interpreter), sampled and its outputs written (count_outputs).
LIGER_MOE_EXACT = ("_moe_router_histogram_kernel", "_moe_router_prefix_sum_kernel")


def _liger_scatter_outputs(s_scatter_idx_ptr, s_reverse_scatter_idx_ptr, x_gather_idx_ptr, tile_row_start_ptr,
                           tile_expert_ptr, topk_indices_ptr, expert_offs_ptr, K, BLOCK_M_TOKEN, **_):
    """What Liger's ``_moe_router_scatter_kernel`` writes over its whole grid, for the counters (its programs
    each sort one tile of 1024 (token, k) pairs: equal work, so a sample counts it; the interpreter takes ~15 s a
    program over its bitonic network): the pairs stably sorted by expert (the kernel orders each expert's pairs by
    their flat index), the inverse permutation, each pair's token, and each expert's tiles of BLOCK_M_TOKEN rows."""
    flat = topk_indices_ptr.reshape(-1).long()
    order = torch.sort(flat, stable=True).indices
    s_scatter_idx_ptr.copy_(order.to(torch.int32))
    s_reverse_scatter_idx_ptr[order] = torch.arange(flat.numel(), dtype=torch.int32, device=flat.device)
    x_gather_idx_ptr.copy_((order // K).to(torch.int32))
    per_expert = torch.bincount(flat, minlength=expert_offs_ptr.numel())
    tiles = (per_expert + BLOCK_M_TOKEN - 1) // BLOCK_M_TOKEN
    expert = torch.repeat_interleave(torch.arange(tiles.numel(), device=flat.device), tiles)
    first = torch.repeat_interleave(torch.cumsum(tiles, 0) - tiles, tiles)
    row = torch.arange(expert.numel(), device=flat.device) - first
    tile_row_start_ptr.copy_((expert_offs_ptr.long()[expert] + row * BLOCK_M_TOKEN).to(torch.int32))
    tile_expert_ptr.copy_(expert.to(torch.int32))


LIGER_MOE_OUTPUTS = {"_moe_router_scatter_kernel": _liger_scatter_outputs}


def _liger_tile_strata(grid, *, tile_row_start_ptr, tile_expert_ptr, expert_start_ptr, BLOCK_M, **_):
    """Liger's grouped GEMMs' programs (grid: M-tiles fastest, then N-tiles) by whether their M-tile is full or
    its expert's last, partly filled one (in order of its rows), for the counters (``OpSpec.count_strata``): the
    routing decides which."""
    import numpy as np

    ends = expert_start_ptr.numpy().astype(np.int64)[tile_expert_ptr.numpy().astype(np.int64) + 1]
    pid = np.arange(math.prod(grid))
    rows = np.minimum(ends - tile_row_start_ptr.numpy().astype(np.int64), BLOCK_M)[pid % grid[0]]
    return plateau_and_rest(pid, rows, top=BLOCK_M)


def _liger_expert_strata(grid, *, expert_start_ptr, **_):
    """Liger's weight gradients (grid: ``E * m_tiles`` fastest, then N-tiles): a program loops over its expert's
    rows. One stratum, in order of those rows, so the counters' mirrored pairs match a light expert with a heavy
    one."""
    import numpy as np

    starts = expert_start_ptr.numpy().astype(np.int64)
    pid = np.arange(math.prod(grid))
    rows = np.diff(starts)[pid % grid[0] // (grid[0] // (len(starts) - 1))]
    return [pid[np.argsort(rows, kind="stable")]]


LIGER_MOE_STRATA = {**dict.fromkeys(("_fused_up_proj_swiglu_kernel", "_fused_down_proj_kernel",
                                     "_moe_bwd_down_proj_kernel", "_moe_bwd_dX_expanded_kernel"), _liger_tile_strata),
                    **dict.fromkeys(("_moe_bwd_dW1_kernel", "_moe_bwd_dW2_kernel"), _liger_expert_strata)}


def _rows_per_program_strata(grid, *, n_rows, rows_per_program, **_):
    """Liger's norm backwards run one program an SM, each over ``rows_per_program`` rows; the last ones hold fewer
    rows or none (1024 rows on 132 SMs: 128 programs of 8 rows, 4 idle). Programs by their rows, for the counters."""
    import numpy as np

    pid = np.arange(grid[0])
    rows = np.clip(n_rows - pid * rows_per_program, 0, rows_per_program)
    return [pid[rows == r] for r in np.unique(rows)]


LIGER_NORM_STRATA = dict.fromkeys(("_rms_norm_backward_kernel", "_layer_norm_backward_kernel"),
                                  _rows_per_program_strata)

DESCRIPTIONS = {
    "layer_norm": {"liger": "Liger LigerLayerNormFunction: same op"},
    "rms_norm": {"liger": "Liger LigerRMSNormFunction (casting mode llama): same op"},
    "partial_rope": {"liger": "Liger LigerRopeFunction with rotary_dim; cos/sin tables made outside the count "
                              "(ours computes them in-kernel); a one-head dummy k; copies into (b, s, h, d)"},
    "mlp": {"liger": "Liger relu_squared kernel for the activation only; both linears are torch (cuBLAS)"},
    "moe": {"liger": "Liger fused_moe (LigerFusedMoEFunction) after a torch router (linear, softmax, top-k)"},
    "attention": {"fla": "FLA parallel_attn (fla-core 0.6.0), causal, GQA, window_size; copies into (b, s, h, d)"},
}


def _module(name: str):
    """The module, or None when its package is not installed (the peer is then unavailable)."""
    try:
        with warnings.catch_warnings():
            # FLA warns, on import, that it finds no GPU and "rolls back to CPU": under the interpreter that is
            # where every kernel runs, ours too; on a GPU it finds one and says nothing
            warnings.filterwarnings("ignore", message="Triton is not supported on current platform")
            return importlib.import_module(name)
    except ImportError:
        return None


class _InterpretedScalar(float):
    """A float that answers ``.to(dtype)``: Liger's norm kernels call ``eps.to(tl.float32)`` on a scalar argument,
    which compiled Triton passes as an fp32 scalar but the interpreter as a Python float. Only under the
    interpreter; compiled code gets the plain float."""

    def to(self, dtype):
        return self


def _scalar(value: float) -> float:
    return _InterpretedScalar(value) if rt.INTERPRET else float(value)


def _liger_norm_module(name: str):
    """Liger's norm module; under the interpreter its ``rsqrt`` (libdevice's, which the interpreter does not
    implement: it returns None) is rebound to ``tl.rsqrt``, the same function. Compiled code keeps libdevice's."""
    mod = _module(name)
    if mod is not None and rt.INTERPRET:
        import triton.language as tl

        # looked up at each call: the interpreter swaps tl's functions for its own only while a kernel runs
        mod.rsqrt = lambda x: tl.rsqrt(x)
    return mod


# ------------------------------------------------------------------------------------------------ Liger


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
    mod = _liger_norm_module("liger_kernel.ops.layer_norm")
    if mod is None:
        return None
    function = _liger_layer_norm_function(mod)

    def liger_layer_norm(x, weight=None, bias=None, eps=1e-5):
        hidden = x.shape[-1]
        weight = torch.ones(hidden, dtype=x.dtype, device=x.device) if weight is None else weight
        bias = torch.zeros(hidden, dtype=x.dtype, device=x.device) if bias is None else bias
        return function.apply(x, weight, bias, _scalar(eps))

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
    mod = _liger_norm_module("liger_kernel.ops.rms_norm")
    if mod is None:
        return None
    function = _liger_rms_norm_function(mod)

    def liger_rms_norm(x, weight=None, eps=1e-6):
        weight = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device) if weight is None else weight
        # offset 0, casting "llama" (our reference's order: normalise in fp32, cast, scale), dx written over dy
        # (Liger's default, in_place=True: no zero-filled dx buffer)
        return function.apply(x, weight, _scalar(eps), _scalar(0.0), "llama", True, None)

    return liger_rms_norm


def _rope_tables(positions, rotary_dim, theta, dtype, device):
    """cos/sin as a model hands them to Liger: (seq, rotary_dim) or (batch, seq, rotary_dim), the angles
    duplicated, from the same fp32 ``inv_freq`` as our kernel and reference; outside the count."""
    from .ops.rope.reference import inv_freq
    from .perf.counters import uncounted

    with uncounted():
        angle = positions.float()[..., None] * inv_freq(rotary_dim, float(theta), device)
        emb = torch.cat((angle, angle), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def liger_rope():
    mod = _module("liger_kernel.ops.rope")
    if mod is None:
        return None
    cache = {}

    def liger_rope(x, positions, *, rotary_dim=None, theta=10000.0):
        rotary_dim = x.shape[-1] if rotary_dim is None else rotary_dim
        key = (positions.data_ptr(), tuple(positions.shape), rotary_dim, float(theta), x.dtype, str(x.device))
        if key not in cache:  # one table per positions, as a model makes once per forward
            cache.clear()
            cache[key] = _rope_tables(positions, rotary_dim, theta, x.dtype, x.device)
        cos, sin = cache[key]
        # Liger rotates q and k together and needs at least one k head (a zero-head k makes an empty tl.arange)
        k = torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        q_out, _ = mod.LigerRopeFunction.apply(x, k, cos, sin, None, 1, rotary_dim)
        return q_out

    return liger_rope


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
        from .perf.counters import uncounted

        with uncounted():
            return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        from .perf.counters import uncounted

        x, w, b = ctx.saved_tensors
        fx, fw, fb, fdy = _fakes(x, w, b, dy)
        with torch.enable_grad():
            inputs = [t.requires_grad_() for t in (fx, fw, fb) if t is not None]
            with uncounted():  # the graph to differentiate: the forward was counted in forward()
                out = F.linear(fx, fw, fb)
            torch.autograd.grad(out, inputs, fdy)  # counted: the ops autograd runs for a linear's backward
        with uncounted():
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
    mod = _module("liger_kernel.ops.relu_squared")
    if mod is None:
        return None

    def liger_relu2_mlp(x, w_in, b_in, w_out, b_out, *, activation="relu2"):
        if activation != "relu2":
            raise NotComparable(f"Liger has relu_squared, not {activation!r}")
        h = _linear(x, w_in, b_in)
        return _linear(mod.LigerReLUSquaredFunction.apply(h), w_out, b_out)

    return liger_relu2_mlp


def liger_moe():
    mod = _module("liger_kernel.ops.fused_moe")
    if mod is None:
        return None

    def liger_moe(x, router_weight, gate_up, down, *, k=8, normalize=False):
        shape, hidden = x.shape, x.shape[-1]
        h = x.reshape(-1, hidden)
        probs = torch.softmax(F.linear(h, router_weight), dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, k, dim=-1)
        if normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = mod.LigerFusedMoEFunction.apply(h, gate_up, down, ids.to(torch.int32), weights.to(x.dtype))
        return out.reshape(shape)

    return liger_moe


# ------------------------------------------------------------------------------------------------ FLA


def _h100_shared_memory_check(arch: str = "none", tensor_idx: int = 0) -> bool:
    """FLA's ``check_shared_mem`` as an H100 answers it (fla/utils/hardware.py: the device's shared memory against
    the arch's), for when there is no GPU to ask."""
    from fla.utils.hardware import Backend

    return rt.H100_SHARED_MEMORY >= Backend.get_shared_memory(arch)


@contextlib.contextmanager
def _cuda_answers_as_h100():
    """In compile-only mode Triton's (stand-in) driver says "cuda", so FLA's import asks torch for the GPU's name
    and capability, which a CPU build of torch cannot answer: within the block it answers as the H100 compiled
    for."""
    if not rt.COMPILE_ONLY or torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.get_device_name, torch.cuda.get_device_capability
    torch.cuda.get_device_name = lambda device=None: "NVIDIA H100 80GB HBM3"
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    try:
        yield
    finally:
        torch.cuda.get_device_name, torch.cuda.get_device_capability = saved


def fla_attention():
    with _cuda_answers_as_h100():
        mod = _module("fla.ops.attn.parallel")
    if mod is None:
        return None
    if rt.INTERPRET or rt.COMPILE_ONLY:
        # FLA picks its tiles (BS 64, BK/BV up to 256, 8 warps on Hopper) by the device's shared memory; with no
        # GPU to ask it would take its smallest (pre-Ampere) ones. Counted and compiled as on the H100 modeled.
        mod.check_shared_mem = _h100_shared_memory_check

    def fla_attention(q, k, v, *, causal=True, window=None, scale=None):
        if not causal:
            raise NotComparable("FLA's parallel_attn is causal only")
        if q.shape[2] != k.shape[2]:
            raise NotComparable("FLA's parallel_attn needs q_len == kv_len")
        o = mod.parallel_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale,
                              window_size=window)
        return o.transpose(1, 2)

    return fla_attention


@functools.cache
def installed() -> dict:
    """{package: its installed version or None}: what the README's set-up installs, as this process has it."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in PINNED:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
