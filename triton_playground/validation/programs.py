"""What each published measurement ran, rebuilt to be counted: the provider's own code at the row's shapes, dtype
and mode, called as Liger-Kernel's benchmark script called it (``data/README.md`` names the script and commit of
each kernel).

``build(row)`` makes a provider's inputs and modules at a row's size, outside anything counted, as the script did
before timing: a :class:`Program`, whose ``call(mode)`` is the function ``do_bench`` timed in that mode, and whose
``steady()`` puts the ``.grad``s as they stand before each timed call of ``do_bench``'s loop: reset for the tensors
of its ``grad_to_none``, present for the leaves outside it (so the counted call adds into them, as every timed call
after the first did).

* Liger's functions run their Triton kernels, which need real memory: their inputs are real, in fp16 where the
  measurement was bf16 (the interpreter computes bf16 wrong; fp16 moves the same bytes and runs the same kernels).
* PyTorch code (the ``huggingface`` and ``torch`` providers) runs on fake tensors: the aten counter needs shapes
  only. The HF MoE loop's routing (one-hot, ``nonzero``, ``torch.where`` per expert) runs on the real
  ``top_k_index``, so the loop takes the measured experts and sizes; its activations and weights are fake.
* Liger's norm backwards size their grid by the device's SM count and take 1 off a GPU: as in the sweep's peers
  (``kernels/ops/layer_norm/peers.py``), their backward is launched as Liger's wrapper launches it, with the
  modeled GPU's count.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..kernels import _runtime as rt
from ..kernels import peer_libs
from ..kernels.ops.layer_norm import peers as norm_peers

STAND_IN = {torch.bfloat16: torch.float16}  # counted in fp16 (see the module doc)
DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}
MODES = {"forward": "fwd", "backward": "bwd", "full": "fwd+bwd"}


@dataclasses.dataclass
class Program:
    """One provider at one measured size: its inputs, made once, and how each mode's timed call runs."""

    forward: Callable[[], object]
    grad_out: Callable[[object], object] | None  # the output's gradient, made before timing (from the output)
    grad_to_none: list  # reset before each timed call
    accumulating: list  # leaves whose .grad persists across timed calls (added into after the first)
    real: bool  # runs Triton kernels (real inputs) rather than PyTorch code on fake tensors
    retain_graph: bool = True  # the full mode's backward keeps the graph (all scripts but fused_add_rms_norm's)
    timed: Callable | None = None  # mode -> the timed call, where a script's modes are its own

    def call(self, mode: str) -> Callable[[], object]:
        """The function ``do_bench`` timed in ``mode`` (Liger's ``run_speed_benchmark`` conventions): forward;
        the backward of one forward made before timing, its gradient made then too; forward, then backward."""
        if self.timed is not None:
            return self.timed(mode)
        if mode == "forward":
            return self.forward
        if mode == "backward":
            y = self.forward()
            g = self.grad_out(y)
            return lambda: torch.autograd.backward(y, g, retain_graph=True)
        g = None

        def full():
            nonlocal g
            y = self.forward()
            g = self.grad_out(y) if g is None else g  # made before timing, as the script's dy
            torch.autograd.backward(y, g, retain_graph=self.retain_graph)

        return full

    def steady(self):
        """The state before a timed call in do_bench's loop: grad_to_none reset, accumulating grads present."""
        for t in self.grad_to_none:
            t.grad = None
        for t in self.accumulating:
            if t.grad is None:
                t.grad = torch.zeros_like(t)


def config_of(row) -> dict:
    return json.loads(row["extra_benchmark_config_str"])


def _dtype(cfg, default="torch.bfloat16"):
    dtype = DTYPES[cfg.get("dtype", default)]
    return STAND_IN.get(dtype, dtype)


def _tensor_factory(real: bool):
    """(randn, ones, zeros, fake mode): on real memory, or making fake tensors (shapes only). On real memory
    ``randn`` leaves the values unset (``torch.empty``): only the routing's values steer what runs, and it is
    drawn for real apart from these; drawing a GB of fp16 normals would take the CPU longer than the counting."""
    if real:
        return torch.empty, torch.ones, torch.zeros, None
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def within(fn):
        def make(*args, **kwargs):
            with mode:
                return fn(*args, **kwargs)
        return make

    return within(torch.randn), within(torch.ones), within(torch.zeros), mode


class _maybe:
    """``with mode:`` when there is one (fake tensors), else nothing."""

    def __init__(self, mode):
        self.mode = mode

    def __enter__(self):
        return self.mode.__enter__() if self.mode is not None else None

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc) if self.mode is not None else False


# ------------------------------------------------------------------------------------------------ per kernel


def _layer_norm(provider, x_value, cfg, real):
    randn, ones, zeros, fake = _tensor_factory(real)
    dtype, m, n, eps = _dtype(cfg), cfg["M"], x_value, cfg["eps"]
    x = randn(m, n, dtype=dtype).requires_grad_()
    dy = randn(m, n, dtype=dtype)
    if provider == "liger":
        w, b = ones(n, dtype=dtype).requires_grad_(), zeros(n, dtype=dtype).requires_grad_()
        function = norm_peers.liger_layer_norm()
        forward, params = (lambda: function(x, w, b, eps)), [w, b]
    else:
        with _maybe(fake):
            ln = torch.nn.LayerNorm(n, eps=eps, dtype=dtype)
        forward, params = (lambda: ln(x)), list(ln.parameters())
    return Program(forward, lambda y: dy, [x], params, real)


def _relu_squared(provider, x_value, cfg, real):
    randn, *_ = _tensor_factory(real)
    x = randn(cfg["M"], x_value, dtype=_dtype(cfg)).requires_grad_()
    dy = randn(cfg["M"], x_value, dtype=_dtype(cfg))
    if provider == "liger":
        from liger_kernel.ops.relu_squared import LigerReLUSquaredFunction

        forward = lambda: LigerReLUSquaredFunction.apply(x)  # noqa: E731
    else:
        forward = lambda: torch.square(F.relu(x))  # noqa: E731  (the script's TorchReLUSquared)
    return Program(forward, lambda y: dy, [x], [], real)


def _liger_fused_add_rms_norm():
    """``LigerFusedAddRMSNormFunction`` with its backward launched at the modeled GPU's SM count (module doc)."""
    mod = peer_libs.liger_norm_module("liger_kernel.ops.fused_add_rms_norm")
    if not (rt.INTERPRET or rt.COMPILE_ONLY):
        return mod.LigerFusedAddRMSNormFunction
    from liger_kernel.ops.utils import torch_to_triton_dtype

    class SizedBackward(mod.LigerFusedAddRMSNormFunction):
        @staticmethod
        def backward(ctx, dY, dS_out):
            S, W, RSTD = ctx.saved_tensors
            shape = dY.shape
            dY, dS_out, S = (t.contiguous().view(-1, shape[-1]) for t in (dY, dS_out, S))
            n_rows, n_cols = dY.shape
            sms = rt.num_sms()
            _dW = torch.empty((sms, n_cols), dtype=torch.float32, device=W.device)
            dX = dY if ctx.in_place else torch.empty_like(dY)
            mod._fused_add_rms_norm_backward_kernel[(sms,)](
                dY, dY.stride(0), dS_out, dS_out.stride(0), dX, dX.stride(0), S, S.stride(0),
                torch_to_triton_dtype[S.dtype], W, W.stride(0), RSTD, RSTD.stride(0), _dW, _dW.stride(0), n_rows,
                n_cols, peer_libs.scalar(ctx.offset), math.ceil(n_rows / sms), ctx.casting_mode,
                BLOCK_SIZE=ctx.BLOCK_SIZE, num_warps=ctx.num_warps, num_stages=ctx.num_stages, has_dS_out=True,
                COMPUTE_DW=True)
            dX = dX.view(*shape)
            return dX, dX, _dW.sum(dim=0).to(W.dtype), None, None, None, None

    return SizedBackward


def _liger_rms_norm():
    return norm_peers._liger_rms_norm_function(peer_libs.liger_norm_module("liger_kernel.ops.rms_norm"))


def _liger_rms_norm():
    return norm_peers._liger_rms_norm_function(peer_libs.liger_norm_module("liger_kernel.ops.rms_norm"))


def _fused_add_rms_norm(provider, x_value, cfg, real):
    randn, ones, *_ = _tensor_factory(real)
    dtype, m, n, eps = _dtype(cfg), cfg["M"], x_value, cfg["eps"]
    x, r = randn(m, n, dtype=dtype).requires_grad_(), randn(m, n, dtype=dtype).requires_grad_()
    dy, ds = randn(m, n, dtype=dtype), randn(m, n, dtype=dtype)
    w = ones(n, dtype=dtype).requires_grad_()
    params = [w]
    if provider == "liger_fused_add_rms_norm":
        function = _liger_fused_add_rms_norm()
        forward = lambda: function.apply(x, r, w, peer_libs.scalar(eps), peer_libs.scalar(0.0), "llama", False)  # noqa
    else:
        inner = ones(n, dtype=dtype).requires_grad_() if provider == "liger_rms_norm" else None
        rms = _liger_rms_norm() if inner is not None else None
        params += [inner] if inner is not None else []

        def forward():  # the script's NaiveAddRMSNorm / AddLigerRMSNorm (data/README.md)
            input_dtype = x.dtype
            h = x.to(torch.float32) + r.to(torch.float32)
            residual = h
            if rms is None:
                variance = h.pow(2).mean(-1, keepdim=True)
                h = h * torch.rsqrt(variance + eps)
            else:
                h = rms.apply(h, inner, peer_libs.scalar(eps), peer_libs.scalar(0.0), "llama", False, None)
            return w * h.to(input_dtype), residual.to(input_dtype)

    return Program(forward, lambda y: (dy, ds), [x, r], params, real, retain_graph=False)


def _megatron_rms_norm(provider, x_value, cfg, real):
    randn, ones, _, fake = _tensor_factory(real)
    dtype = _dtype({})  # the script's bf16
    x = randn(cfg["S"], cfg["B"], x_value, dtype=dtype).requires_grad_()
    if provider == "liger":
        w = ones(x_value, dtype=dtype).requires_grad_()
        function = _liger_rms_norm()
        forward = lambda: function.apply(x, w, peer_libs.scalar(1e-6), peer_libs.scalar(0.0), "llama", False, None)  # noqa
        params = [w]
    else:
        with _maybe(fake):
            norm = torch.nn.RMSNorm(x_value, eps=1e-6, dtype=dtype)
        forward, params = (lambda: norm(x)), list(norm.parameters())

    def timed(mode):
        if mode == "forward":
            return forward

        def call():  # "backward" resets x.grad inside the timed call; "full" lets it accumulate
            if mode == "backward":
                x.grad = None
            forward().sum().backward()
        return call

    # no grad_to_none in this script: the weight's grad accumulates, and x's in "full"
    return Program(forward, None, [], params + [x], real, timed=timed)


def _moe_inputs(cfg, x_value, real):
    """The script's ``_make_moe_inputs`` (seed 42): the routing from real logits; x and the weights real for
    Liger, fake for the HF loop; the weights non-leaf (``randn(requires_grad) * 0.02``), as there."""
    t = x_value if cfg["sweep_dim"] == "T" else cfg["T"]
    e = x_value if cfg["sweep_dim"] == "E" else cfg["E"]
    h, i, k, dtype = cfg["H"], cfg["intermediate_dim"], cfg["K"], _dtype(cfg)
    randn, *_ = _tensor_factory(real)
    torch.manual_seed(42)
    x = randn(t, h, dtype=dtype).requires_grad_()
    leaves = [randn(e, 2 * i, h, dtype=dtype).requires_grad_(), randn(e, h, i, dtype=dtype).requires_grad_()]
    gate_up, down = leaves[0] * 0.02, leaves[1] * 0.02
    logits = torch.randn(t, e)  # real: the routing is data
    top_k_index = torch.topk(logits, k, dim=-1).indices.to(torch.int32)
    weights = torch.softmax(torch.gather(logits, 1, top_k_index.long()), dim=-1).to(dtype)
    if not real:
        weights = x.fake_mode.from_tensor(weights)
    return x, gate_up, down, top_k_index, weights.requires_grad_(), leaves


def _hf_moe_forward(x, gate_up, down, top_k_index, top_k_weights):
    """The script's ``_huggingface_moe_forward`` (Mixtral's sparse MoE block), op for op."""
    e = gate_up.shape[0]
    final = torch.zeros_like(x)
    with torch.no_grad():
        expert_mask = F.one_hot(top_k_index.long(), num_classes=e).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for eh in expert_hit:
        eidx = eh[0]
        top_k_pos, token_idx = torch.where(expert_mask[eidx])
        curr = x[token_idx]
        gate, up = F.linear(curr, gate_up[eidx]).chunk(2, dim=-1)
        curr = F.silu(gate) * up
        curr = F.linear(curr, down[eidx])
        curr = curr * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, curr.to(final.dtype))
    return final


def _liger_routing(original):
    """Liger's ``compute_routing_metadata`` as counted here: the same launches, its scatter kernel run for one
    program and scaled (each program sorts one 1024-pair tile: equal work; the interpreter takes ~15 s a
    program over its bitonic network, so the T=32768 routing would take an hour), and its outputs then set to
    what the whole grid writes, computed in torch outside the count: the pairs stably sorted by expert
    (the kernel orders each expert's pairs by their flat (token, k) index), the inverse permutation, each pair's
    token, and each expert's 64-row tiles from the histogram's exact counts. Counted once per routing and
    replayed for the other calls on the same tokens (every forward routes them identically)."""
    from ..kernels.perf import counters

    cache = {}

    def routing(topk_indices, E, block_m_token=64):
        key = (topk_indices.data_ptr(), tuple(topk_indices.shape), E, block_m_token)
        if key in cache:
            outputs, counted = cache[key]
            counters.replay(counted)
            return outputs
        with counters.count(sample=1) as counted:  # nested: the open counts see these launches too
            outputs = original(topk_indices, E, block_m_token)
        with counters.uncounted():
            count_e, start, gather, scatter, reverse, row_start, tile_expert = outputs
            flat = topk_indices.reshape(-1).long()
            order = torch.sort(flat, stable=True).indices
            scatter.copy_(order.to(torch.int32))
            reverse[order] = torch.arange(flat.numel(), dtype=torch.int32)
            gather.copy_((order // topk_indices.shape[1]).to(torch.int32))
            tiles = [(int(start[e]) + j * block_m_token, e) for e in range(E)
                     for j in range(-(-int(count_e[e]) // block_m_token))]
            row_start.copy_(torch.tensor([t for t, _ in tiles], dtype=torch.int32))
            tile_expert.copy_(torch.tensor([e for _, e in tiles], dtype=torch.int32))
        cache[key] = outputs, counted
        return outputs

    return routing


def _fused_moe(provider, x_value, cfg, real):
    x, gate_up, down, top_k_index, weights, leaves = _moe_inputs(cfg, x_value, real)
    if provider == "liger":
        from liger_kernel.ops import fused_moe
        from liger_kernel.ops.fused_moe import LigerFusedMoEFunction

        original = getattr(fused_moe.compute_routing_metadata, "original", fused_moe.compute_routing_metadata)
        routing = _liger_routing(original)
        routing.original = original

        def forward():
            fused_moe.compute_routing_metadata = routing
            try:
                return LigerFusedMoEFunction.apply(x, gate_up, down, top_k_index, weights)
            finally:
                fused_moe.compute_routing_metadata = original
    else:
        forward = lambda: _hf_moe_forward(x, gate_up, down, top_k_index, weights)  # noqa: E731
    # grad_to_none names x, the (non-leaf) weights and the routing weights: the weights' leaves behind "* 0.02"
    # are not in it, so their grads accumulate
    program = Program(forward, torch.randn_like, [x, weights], leaves, real)

    def timed(mode):
        if mode != "full":
            return dataclasses.replace(program, timed=None).call(mode)

        def full():  # the script draws the output's gradient inside the timed call
            y = forward()
            y.backward(torch.randn_like(y), retain_graph=True)
        return full

    program.timed = timed
    return program


BUILDERS = {
    "layer_norm": _layer_norm,
    "relu_squared": _relu_squared,
    "fused_add_rms_norm": _fused_add_rms_norm,
    "megatron_rms_norm": _megatron_rms_norm,
    "fused_moe": _fused_moe,
}


def runs_triton(row) -> bool:
    """Whether the provider's code runs Triton kernels (and so is counted on real inputs)."""
    return row["kernel_provider"].startswith("liger")


def build(row) -> Program:
    """The program of a measured row's provider and size (any of its modes)."""
    return BUILDERS[row["kernel_name"]](row["kernel_provider"], int(row["x_value"]), config_of(row), runs_triton(row))
