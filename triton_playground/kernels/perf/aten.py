"""The aten side of the counters (``kernels/perf/counters.py``): the kernels an aten op launches on a GPU, their
bytes (operands read and written once) and FLOPs (``torch.utils.flop_counter``'s formulas), and what launches
nothing (views, allocations) or makes the host wait (read-backs)."""

from __future__ import annotations

import torch

from .records import Launch


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _bytes(tensors) -> int:
    unique = {id(t): t for t in tensors}.values()
    return sum(t.numel() * t.element_size() for t in unique)


_NO_KERNEL = {  # aten ops that only describe or allocate tensors: no kernel runs on a GPU
    "detach", "alias", "lift_fresh", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "_unsafe_view", "set_", "resize_", "_reshape_alias", "t", "lift_fresh_copy",
}
# aten ops after which a GPU's host holds until the device has caught up: their output's size, or a value, is
# read back (torch.where(mask), .item(), .nonzero(), ...)
_SYNCS = {"nonzero", "_local_scalar_dense", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
          "argwhere", "nonzero_static"}
_DTYPE_CLASS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def _register_cpu_sdpa_flops():
    """torch's FLOP formulas cover the GPU's SDPA kernels but not the CPU one that runs here (fake tensors take
    the CPU's path): give it the same formulas, so SDPA's counted FLOPs are those the GPU's flash kernel would do
    (torch counts the full square, causal or not). And ``_grouped_mm``, which has none."""
    from torch.utils.flop_counter import (flop_registry, register_flop_formula, sdpa_backward_flop_count,
                                          sdpa_flop_count)

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        return

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    if hasattr(aten, "_grouped_mm") and aten._grouped_mm not in flop_registry:
        @register_flop_formula(aten._grouped_mm)
        def _grouped_mm(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
            """torch._grouped_mm (the MoE's grouped GEMMs; torch has no formula): each row of a 2-D ``a`` meets
            its group's matrix of a 3-D ``b`` (2·M·K·N); two 2-D operands are grouped along K (the weight
            gradient: 2·M·K·N over all groups); two 3-D ones are a batch."""
            (m, k), n = a_shape[-2:], b_shape[-1]
            return 2 * m * k * n * (a_shape[0] if len(a_shape) == 3 and len(b_shape) == 3 else 1)


# aten ops that overwrite their ``self`` without reading it, and factories that read only their input's shape
_OVERWRITES_SELF = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_"}
_SHAPE_ONLY = {"zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "randint_like", "new_zeros",
               "new_ones", "new_full"}


def _operands_read(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an aten op reads: its tensor arguments, less those it only writes (``out=`` arguments, the
    ``self`` of ``copy_`` and ``fill_``) or only takes the shape of (``zeros_like``)."""
    name = func._schema.name.split("::")[-1]
    if name in _SHAPE_ONLY:
        return []
    written_only = [kwargs[a.name] for a in func._schema.arguments
                    if a.kwarg_only and a.alias_info is not None and a.alias_info.is_write and a.name in kwargs]
    if name in _OVERWRITES_SELF and args:
        written_only.append(args[0])
    skip = {id(t) for t in written_only}
    return [t for t in _tensors((args, kwargs)) if id(t) not in skip]


def _layer_norm_backward_kernels(args, out) -> list[tuple[list, list]]:
    """CUDA's ``native_layer_norm_backward`` is two kernels (aten/src/ATen/native/cuda/layer_norm_kernel.cu):
    dX row by row, from dY, X, mean, rstd and gamma; then dgamma and dbeta column by column, from dY, X, mean and
    rstd again (``LaunchGammaBetaBackwardCUDAKernel``). So dY and X are read twice."""
    grad_out, x, _, mean, rstd, weight = args[:6]
    dx, dweight, dbias = out
    stats = [t for t in (mean, rstd) if isinstance(t, torch.Tensor)]
    kernels = []
    if dx is not None:
        kernels.append(([grad_out, x, *stats, *([weight] if weight is not None else [])], [dx]))
    if dweight is not None or dbias is not None:
        kernels.append(([grad_out, x, *stats], [t for t in (dweight, dbias) if t is not None]))
    return kernels


# aten ops whose CUDA implementation is more than one kernel: (args, out) -> [(tensors read, tensors written)]
_CUDA_KERNELS = {"native_layer_norm_backward": _layer_norm_backward_kernels}


def _aten_launches(func, args, kwargs, out) -> list[Launch]:
    """The kernels an aten op launches on a GPU: none for a view, an allocation or a query (.device, .size());
    most ops one, reading its operands and writing its outputs once; a few more (``_CUDA_KERNELS``)."""
    name = func._schema.name.split("::")[-1]
    if func.is_view or name in _NO_KERNEL or not _tensors(out):
        return []
    from torch.utils.flop_counter import flop_registry

    kernel = str(func.overloadpacket.__name__)
    passes = _CUDA_KERNELS.get(name)
    traffic = passes(args, out) if passes else [(_operands_read(func, args, kwargs), _tensors(out))]
    launches = [Launch(kernel=kernel, source="aten", bytes_read=_bytes(read), bytes_written=_bytes(written))
                for read, written in traffic]
    formula = flop_registry.get(func.overloadpacket)
    if formula is not None:
        inputs = _tensors((args, kwargs))
        dtype = inputs[0].dtype if inputs else torch.float32
        # torch's fp32 matmuls on a GPU run in full fp32 unless TF32 is allowed
        kind = _DTYPE_CLASS.get(dtype) or ("fp32-tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32-ieee")
        launches[0].dot_flops[kind] += int(formula(*args, **kwargs, out_val=out))
    return launches
