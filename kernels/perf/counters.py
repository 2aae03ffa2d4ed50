"""Counting the work and traffic a kernel really does, while it runs.

Triton kernels (``count()``), under the interpreter. The interpreter executes every Triton op through one
builder object; three of its methods see all of a kernel's work and traffic, so they are wrapped for the
duration of the block:

* ``create_masked_load`` / ``create_masked_store`` (plain, block-pointer and tensor-descriptor loads and stores
  all end there): the bytes moved are the elements whose mask is true times the element size of the pointed-to
  type — what the memory system would be asked for, with no credit for caches;
* ``create_dot``: ``2·M·N·K`` FLOPs per call, whatever the masks said about the tile (a fully masked tile a
  kernel fails to skip costs its full FLOPs: exactly what block skipping saves), by the dtype of the inputs and
  the requested precision, since an H100 runs them at different rates;
* atomics count as a read and a write of each element whose mask is true.

A launch is one grid execution (``GridExecutor.__call__``): its kernel name and its number of programs. Every
count belongs to the launch in flight, so a counter reports per launch, per kernel name and in total.

PyTorch code (``count_torch()``), at the aten level, with a ``TorchDispatchMode``: each aten op that would launch
a kernel on a GPU (views and metadata ops excluded) is one launch whose FLOPs come from
``torch.utils.flop_counter``'s formulas and whose bytes are its tensor inputs read and outputs written. So the
eager reference and our kernels are counted side by side, by the same definitions (an aten op reads and writes
every element of its operands: no fusion, no partial reads).

    with kernels.count() as c:
        kernels.attention(q, k, v)
    c.flops, c.bytes_read, c.bytes_written, c.launches, c.programs, c.by_kernel()["attn_fwd"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import defaultdict

import numpy as np
import torch

__all__ = ["Launch", "Counter", "count", "count_torch"]


@dataclasses.dataclass
class Launch:
    """One kernel launch: a Triton grid, or one aten op."""

    kernel: str
    programs: int = 1
    # FLOPs of matrix products by input class ("fp16", "bf16", "fp32-ieee", "fp32-tf32", ...): the classes run at
    # different peaks. Elementwise arithmetic is not counted (it is never what bounds these kernels).
    dot_flops: dict = dataclasses.field(default_factory=lambda: defaultdict(int))
    bytes_read: int = 0
    bytes_written: int = 0

    @property
    def flops(self) -> int:
        return sum(self.dot_flops.values())


@dataclasses.dataclass
class Counter:
    """The launches seen inside one ``count()`` / ``count_torch()`` block, and their totals."""

    records: list = dataclasses.field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.records)

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.records)

    @property
    def bytes_written(self) -> int:
        return sum(r.bytes_written for r in self.records)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def launches(self) -> int:
        return len(self.records)

    @property
    def programs(self) -> int:
        return sum(r.programs for r in self.records)

    def by_kernel(self) -> dict[str, Counter]:
        """name -> a Counter of that kernel's launches only."""
        out: dict[str, Counter] = {}
        for r in self.records:
            out.setdefault(r.kernel, Counter()).records.append(r)
        return out

    def summary(self) -> str:
        lines = [f"{'kernel':<28}{'launches':>9}{'programs':>10}{'GFLOP':>10}{'MB read':>10}{'MB written':>11}"]
        for name, c in list(self.by_kernel().items()) + [("total", self)]:
            lines.append(f"{name:<28}{c.launches:>9}{c.programs:>10}{c.flops / 1e9:>10.3f}"
                         f"{c.bytes_read / 1e6:>10.3f}{c.bytes_written / 1e6:>11.3f}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ Triton


_active: list[Counter] = []  # counters of the open count() blocks (nested blocks each see everything)
_launch: list = [None]  # the launch in flight


def _tl_dtype_name(dtype) -> str:
    return {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp64": "fp64"}.get(dtype.name, dtype.name)


def _element_bytes(tt_dtype) -> int:
    return max(1, tt_dtype.primitive_bitwidth // 8)


def _as_fp32(handle):
    from triton.runtime import interpreter as interp

    if handle.dtype.scalar.name == "bf16":  # kept as raw uint16 bits by the interpreter
        return interp._convert_float(handle.data, interp.tl.bfloat16, interp.tl.float32, None).view(np.float32)
    return handle.data.astype(np.float32)


def _current() -> Launch | None:
    return _launch[0] if _active else None


def _install():
    """Wrap the interpreter's builder and grid executor (once; the wrappers do nothing outside count())."""
    from triton.runtime import interpreter as interp

    if getattr(interp, "_playground_counting", False):
        return
    builder = interp.InterpreterBuilder
    load, store, dot = builder.create_masked_load, builder.create_masked_store, builder.create_dot
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas
    run, set_grid = interp.GridExecutor.__call__, builder.set_grid_dim

    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        if (launch := _current()) is not None:
            launch.bytes_read += int(mask.data.sum()) * _element_bytes(ptrs.get_element_ty())
        return load(self, ptrs, mask, *args, **kwargs)

    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
        if (launch := _current()) is not None:
            launch.bytes_written += int(mask.data.sum()) * _element_bytes(ptrs.get_element_ty())
        return store(self, ptrs, value, mask, *args, **kwargs)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if (launch := _current()) is not None:
            m, k = a.data.shape[-2:]
            n = b.data.shape[-1]
            batch = math.prod(a.data.shape[:-2])
            name = _tl_dtype_name(a.dtype.scalar)
            if name == "fp32":  # an fp32 dot runs on the tensor cores only as TF32
                name = "fp32-ieee" if str(input_precision).lower().endswith("ieee") else "fp32-tf32"
            launch.dot_flops[name] += 2 * batch * m * n * k
        if a.dtype.scalar.name in ("fp16", "bf16") and d.data.dtype == np.float32:
            # numpy has no fast 16-bit matmul: multiply in fp32 instead. Products of 16-bit floats are exact in
            # fp32 and a GPU accumulates them in fp32, so the result is the same, hundreds of times sooner.
            a = interp.TensorHandle(_as_fp32(a), interp.tl.float32)
            b = interp.TensorHandle(_as_fp32(b), interp.tl.float32)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def create_atomic_rmw(self, op, ptr, val, mask, *args):
        if (launch := _current()) is not None:
            nbytes = int(mask.data.sum()) * _element_bytes(ptr.get_element_ty())
            launch.bytes_read += nbytes
            launch.bytes_written += nbytes
        return rmw(self, op, ptr, val, mask, *args)

    def create_atomic_cas(self, ptr, cmp, val, *args):
        if (launch := _current()) is not None:
            nbytes = ptr.data.size * _element_bytes(ptr.get_element_ty())
            launch.bytes_read += nbytes
            launch.bytes_written += nbytes
        return cas(self, ptr, cmp, val, *args)

    def set_grid_dim(self, *grid):
        if _active and _launch[0] is not None and _launch[0].programs == 0:
            _launch[0].programs = math.prod(grid)
        return set_grid(self, *grid)

    def grid_call(self, *args, **kwargs):
        if not _active:
            return run(self, *args, **kwargs)
        launch = Launch(kernel=self.fn.__name__, programs=0)
        outer, _launch[0] = _launch[0], launch
        try:
            return run(self, *args, **kwargs)
        finally:
            _launch[0] = outer
            for counter in _active:
                counter.records.append(launch)

    builder.create_masked_load, builder.create_masked_store = create_masked_load, create_masked_store
    builder.create_dot, builder.set_grid_dim = create_dot, set_grid_dim
    builder.create_atomic_rmw, builder.create_atomic_cas = create_atomic_rmw, create_atomic_cas
    interp.GridExecutor.__call__ = grid_call
    interp._playground_counting = True


@contextlib.contextmanager
def count():
    """Count every Triton launch inside the block (needs the interpreter: on a GPU the kernels are compiled, and
    nothing executes op by op where it could be counted)."""
    from .. import _runtime as rt

    if not rt.INTERPRET:
        raise RuntimeError("kernels.count() counts under the Triton interpreter; this process compiles kernels "
                           "for a GPU (TRITON_INTERPRET is not 1)")
    _install()
    counter = Counter()
    _active.append(counter)
    try:
        yield counter
    finally:
        _active.remove(counter)


# ------------------------------------------------------------------------------------------------ PyTorch


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


_NO_KERNEL = {  # aten ops that only describe tensors (no kernel runs on a GPU)
    "detach", "alias", "lift_fresh", "_to_copy_noop", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "_unsafe_view", "clone_noop", "set_", "resize_", "_reshape_alias", "t", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_local_scalar_dense",
}


def _launches_a_kernel(func) -> bool:
    return not func.is_view and func._schema.name.split("::")[-1] not in _NO_KERNEL


@contextlib.contextmanager
def count_torch():
    """Count the aten ops run inside the block (eager PyTorch, autograd's backward included)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    counter = Counter()

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if _launches_a_kernel(func):
                launch = Launch(kernel=str(func.overloadpacket.__name__))
                formula = flop_registry.get(func.overloadpacket)
                if formula is not None:
                    inputs = _tensors((args, kwargs))
                    dtype = inputs[0].dtype if inputs else torch.float32
                    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(dtype)
                    # torch's own fp32 matmuls on a GPU run in full fp32 unless TF32 is allowed
                    name = name or ("fp32-tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32-ieee")
                    launch.dot_flops[name] += int(formula(*args, **kwargs, out_val=out))
                launch.bytes_read = _bytes(_tensors((args, kwargs)))
                launch.bytes_written = _bytes(_tensors(out))
                counter.records.append(launch)
            return out

    with _Mode():
        yield counter
