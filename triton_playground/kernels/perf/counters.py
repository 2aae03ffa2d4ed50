"""Counting the work and traffic a kernel really does, while it runs.

Triton kernels (``count()``), under the interpreter. The interpreter executes every Triton op through one
builder object; three of its methods see all of a kernel's work and traffic, so they are wrapped for the
duration of the block:

* ``create_masked_load`` / ``create_masked_store`` (plain, block-pointer and tensor-descriptor loads and stores
  all end there): the bytes moved are the elements whose mask is true times the element size of the pointed-to
  type — what the memory system would be asked for, with no credit for caches;
* ``create_dot``: ``2·M·N·K`` FLOPs per call, whatever the masks said about the tile (a fully masked tile a
  kernel fails to skip costs its full FLOPs: exactly what block skipping saves), by the dtype of the inputs and
  the requested precision, since an H100 runs them at different rates (fp32 "tf32x3" executes three TF32
  products: ``3·2·M·N·K`` TF32 FLOPs);
* atomics count as a read and a write of each element whose mask is true.

A launch is one grid execution (``GridExecutor.__call__``): its kernel name and its number of programs. Every
count belongs to the launch in flight, so a counter reports per launch, per kernel name and in total.

PyTorch code, in the same block, at the aten level with a ``TorchDispatchMode``: each aten op that would launch
a kernel on a GPU (views and metadata ops excluded) is one launch whose FLOPs come from
``torch.utils.flop_counter``'s formulas and whose bytes are its tensor inputs read and outputs written (an aten
op reads and writes every element of its operands: no fusion, no partial reads; what it only overwrites, as
``copy_``'s destination, or only takes the shape of, as ``zeros_like``'s input, it does not read). An op that is
several kernels on a GPU (``native_layer_norm_backward``: dX, then dgamma and dbeta) is that many launches. So
the eager reference and our kernels — with the torch ops their wrappers run around the launches (a ``zeros`` for
partial sums, a final ``sum``) — are counted side by side, by the same definitions. Works on fake tensors too (``FakeTensorMode``), so
a reference can be counted at sizes too big to run here.

Sampling (``count(sample=S)``): a launch of more than S programs runs only S of them, in mirrored pairs (a program
and the one whose index is reversed on every grid axis) spread by a golden-ratio sequence, and its counts are
scaled by programs / programs run; ``seconds`` may stop it sooner, after a whole pair. Exact when the programs do
equal work (GEMM tiles, rows of a norm) and when their work is affine in their indices (causal attention's query
and key blocks: a pair's mean is the grid's); where the work differs by data, a kernel's ``strata`` (the MoE's
GEMM blocks: full, partly filled, past the last expert) are sampled and scaled each on its own. Wrong when later
launches depend on the values of the skipped programs: kernels named in ``exact`` always run whole (the MoE's
dispatch), or have their outputs written by ``outputs`` (its router). ``Launch`` records how many programs ran;
``tests/test_modeled_counting.py`` holds sampled counts to within 2% of exact ones.

    with kernels.count() as c:
        kernels.attention(q, k, v)
    c.flops, c.bytes_read, c.bytes_written, c.launches, c.programs, c.by_kernel()["attn_fwd"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from .. import _runtime as _rt

__all__ = ["Launch", "Counter", "count", "replay", "uncounted"]


@dataclasses.dataclass
class Launch:
    """One kernel launch: a Triton grid, or one aten op."""

    kernel: str
    programs: int = 1
    programs_run: int = 1  # < programs when the launch was sampled (its counts are then scaled up)
    source: str = "triton"  # or "aten"
    # FLOPs of matrix products by input class ("fp16", "bf16", "fp32-ieee", "fp32-tf32", ...): the classes run at
    # different peaks. Elementwise arithmetic is not counted (it is never what bounds these kernels).
    dot_flops: dict = dataclasses.field(default_factory=lambda: defaultdict(int))
    bytes_read: int = 0
    bytes_written: int = 0
    num_warps: int | None = None  # a Triton launch's warps a program (what bounds how many programs share an SM)
    # Traffic by tensor, for the L2 model (kernels/perf/model.py): the bytes asked of each of the launch's tensors
    # ({(tensor index, "r" or "w"): bytes}) and each tensor's extent (bytes between its first and last element).
    # A tensor asked for more bytes than its extent is re-read; what reaches HBM depends on whether L2 holds it.
    requested: dict = dataclasses.field(default_factory=lambda: defaultdict(int))
    extents: list = dataclasses.field(default_factory=list)
    # The most loads one line of the kernel issued in a program (its loop's trip count; 1 without a loop), over the
    # programs run. A program whose loop has no tl.dot waits for each trip's loads before the next (Triton
    # pipelines the loops that feed tl.dot), which bounds a persistent grid's speed; and the programs resident
    # together walk their loops in step, so what L2 must hold at once is one trip's data of each
    # (kernels/perf/model.py).
    trips: float = 1.0

    @property
    def flops(self) -> int:
        return sum(self.dot_flops.values())

    @property
    def bytes_unique(self) -> int:
        """Bytes counted once per element touched: every tensor's requested bytes, capped by its extent (what the
        launch must move at least, however well L2 serves its re-reads). Aten launches count operands once."""
        if not self.extents:
            return self.bytes_read + self.bytes_written
        attributed = sum(self.requested.values())
        rest = self.bytes_read + self.bytes_written - attributed  # pointers into no tensor argument (rare)
        return rest + sum(min(n, self.extents[i]) for (i, _), n in self.requested.items())


@dataclasses.dataclass
class Counter:
    """The launches seen inside one ``count()`` block, and their totals."""

    records: list = dataclasses.field(default_factory=list)
    # what the host does besides launching: (number of records before it, "op" or "sync"), in order. "op": an aten
    # op that launches nothing (a view, an allocation); "sync": one that makes the host wait for the GPU
    # (nonzero, .item(), ...). The model's timeline reads them (kernels/perf/model.py).
    host: list = dataclasses.field(default_factory=list)

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

    @property
    def bytes_unique(self) -> int:
        return sum(r.bytes_unique for r in self.records)

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


@dataclasses.dataclass(eq=False)  # identity: two sessions with equal counts are still two
class _Session:
    counter: Counter
    sample: int | None
    seconds: float | None
    exact: frozenset
    outputs: dict  # kernel name -> writer(**the launch's arguments) of what its whole grid writes
    strata: dict  # kernel name -> strata(grid, **the launch's arguments): its programs of like work, in lists


_sessions: list[_Session] = []  # open count() blocks (nested blocks each see everything)
_launch: list = [None]  # the Triton launch in flight


def _element_bytes(tt_dtype) -> int:
    return max(1, tt_dtype.primitive_bitwidth // 8)


def _as_fp32(handle):
    from triton.runtime import interpreter as interp

    if handle.dtype.scalar.name == "bf16":  # kept as raw uint16 bits by the interpreter
        return interp._convert_float(handle.data, interp.tl.bfloat16, interp.tl.float32, None).view(np.float32)
    return handle.data.astype(np.float32)


_GOLDEN = (5**0.5 - 1) / 2


def _sampled_ids(total: int, sample: int | None) -> list[int]:
    """Program ids to run: all, or ``sample`` of them (rounded up to even) in mirrored pairs ``(p, total - 1 - p)``,
    the ``p`` spread by a golden-ratio (Weyl) sequence over the flattened ids.

    The mirror of a program reverses its index on every grid axis at once, so a pair's mean is the grid's mean
    whenever a program's work is affine in its indices (causal attention: the key blocks a query block visits grow
    by one a block; dK/dV's shrink), and any prefix of whole pairs keeps that (a time budget may stop the launch
    early, at a pair's end). The Weyl points spread the pairs over every axis, where equal strides would not: with
    the grid's first axis fastest, a stride that is a multiple of its size picks the same first-axis index every
    time (the same query block of every head, say)."""
    if sample is None or total <= sample:
        return list(range(total))
    ids = []
    for i in range((sample + 1) // 2):
        first = int(((i + 0.5) * _GOLDEN) % 1.0 * total)
        ids += [first, total - 1 - first]
    return ids  # a program may come twice (its pair, or another's): each run counts, as its weight in the mean


def _run_grid(executor, args_dev, kwargs, sample, seconds, strata=None):
    """``GridExecutor.__call__`` (triton/runtime/interpreter.py, 3.6) with the grid loop over chosen programs.

    Sampled (a grid of more than ``sample`` programs), the programs are split into strata (``strata(grid,
    **arguments)``: lists of flattened program ids of like work; else one stratum, the grid), each gets its share
    of the sample (a pair at least, see :func:`_sampled_ids`) and of ``seconds``, and what each stratum's programs
    counted is scaled by its size over the programs it ran."""
    import inspect

    from triton.runtime import interpreter as interp

    argspec = inspect.getfullargspec(executor.fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args}
    args_hst, kwargs_hst = executor._init_args_hst(args_dev, kwargs)
    for hook in executor.pre_run_hooks:
        hook(*args_hst, **kwargs_hst)
    patch_scope = interp._patch_lang(executor.fn)
    launch = _launch[0]
    try:
        named = inspect.getcallargs(executor.fn, *args_hst, **kwargs_hst)
        args = {name: arg if name in executor.constexprs else interp._implicit_cvt(arg) for name, arg in named.items()}
        _track(launch, _regions(list(args_hst) + list(kwargs_hst.values())))
        grid = executor.grid(args) if callable(executor.grid) else executor.grid
        grid = tuple(grid) + (1,) * (3 - len(grid))
        interp.interpreter_builder.set_grid_dim(*grid)
        total = math.prod(grid)
        whole = sample is None or total <= sample
        groups = [range(total)] if whole or strata is None else [g for g in strata(grid, **named) if len(g)]
        if sum(len(g) for g in groups) != total:
            raise ValueError(f"the strata of {launch.kernel} hold {sum(len(g) for g in groups)} programs of {total}")
        launch.programs, launch.programs_run = total, 0
        try:
            for group in groups:
                share = len(group) / total
                ids = _sampled_ids(len(group), None if whole else min(len(group), max(2, round(sample * share))))
                budget = None if whole or len(ids) == len(group) or seconds is None else seconds * share
                before, started, run = _snapshot(launch), time.perf_counter(), 0
                for run, index in enumerate(ids, 1):
                    pid = int(group[index])  # x fastest, as a GPU numbers its programs
                    interp.interpreter_builder.set_grid_idx(pid % grid[0], (pid // grid[0]) % grid[1],
                                                            pid // (grid[0] * grid[1]))
                    executor.fn(**args)
                    if budget is not None and run % 2 == 0 and time.perf_counter() - started > budget:
                        break  # after a whole pair
                launch.programs_run += run
                if run:
                    _scale_since(launch, before, len(group) / run)
        except Exception as e:
            raise interp.InterpreterError(repr(e)) from e
    finally:
        patch_scope.restore()
    executor._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)


def _snapshot(launch: Launch) -> tuple:
    return (dict(launch.dot_flops), launch.bytes_read, launch.bytes_written, dict(launch.requested),
            dict(launch._sites))


def _scale_since(launch: Launch, before: tuple, factor: float) -> None:
    """What ``launch`` counted since ``before`` (a :func:`_snapshot`), times ``factor``: a sample standing for the
    programs it was drawn from."""
    if factor == 1:
        return
    flops, read, written, requested, sites = before
    for key in launch._sites:  # loads per line: the trip count is over the whole grid too
        launch._sites[key] = sites.get(key, 0) + (launch._sites[key] - sites.get(key, 0)) * factor
    for key in launch.dot_flops:
        launch.dot_flops[key] = flops.get(key, 0) + round((launch.dot_flops[key] - flops.get(key, 0)) * factor)
    launch.bytes_read = read + round((launch.bytes_read - read) * factor)
    launch.bytes_written = written + round((launch.bytes_written - written) * factor)
    for key in launch.requested:
        launch.requested[key] = requested.get(key, 0) + round((launch.requested[key] - requested.get(key, 0)) * factor)


def _regions(values) -> list[tuple[int, int]]:
    """(first byte, one past the last) of each tensor among a launch's arguments, in argument order; a tensor
    descriptor stands for its base tensor."""
    out = []
    for value in values:
        if isinstance(value, tuple):
            out += _regions(value)
            continue
        if type(value).__name__ == "TensorDescriptor":
            value = value.base
        if isinstance(value, torch.Tensor) and value.numel():
            span = 1 + sum((n - 1) * stride for n, stride in zip(value.shape, value.stride()))
            out.append((value.data_ptr(), value.data_ptr() + span * value.element_size()))
    return out


def _track(launch: Launch, regions: list[tuple[int, int]]) -> None:
    """Prepare ``launch`` to attribute its loads and stores to the tensors of ``regions``."""
    launch.extents = [end - start for start, end in regions]
    order = np.argsort([start for start, _ in regions], kind="stable")
    launch._order = order
    launch._starts = np.array([regions[i][0] for i in order], dtype=np.int64)
    launch._ends = np.array([regions[i][1] for i in order], dtype=np.int64)


def _attribute(launch: Launch, ptrs, mask, element_bytes: int, kind: str) -> None:
    """Add the bytes of the elements a mask lets through to the tensors their addresses fall in."""
    starts = getattr(launch, "_starts", None)
    if starts is None or not len(starts):
        return
    addresses = np.asarray(ptrs.data)
    keep = np.asarray(mask if isinstance(mask, np.ndarray) else mask.data, dtype=bool)
    addresses = np.broadcast_to(addresses, np.broadcast_shapes(addresses.shape, keep.shape))
    addresses = addresses[np.broadcast_to(keep, addresses.shape)].astype(np.int64, copy=False)
    if not addresses.size:
        return
    where = np.searchsorted(starts, addresses, side="right") - 1
    inside = (where >= 0) & (addresses < launch._ends[np.maximum(where, 0)])
    for position, n in enumerate(np.bincount(where[inside], minlength=len(starts))):
        if n:
            launch.requested[(int(launch._order[position]), kind)] += int(n) * element_bytes


def _count_site(launch: Launch) -> None:
    """One more load issued by the kernel's line that is running (a helper's loads count at the helper's call)."""
    source = getattr(launch, "_source", None)
    if source is None:
        return
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename != source:
        frame = frame.f_back
    if frame is not None:
        launch._sites[frame.f_lineno] += 1


def _true(mask) -> int:
    """Elements a mask lets through: a TensorHandle's array, or a descriptor load/store's bare numpy array."""
    return int(np.count_nonzero(mask if isinstance(mask, np.ndarray) else mask.data))


def _install():
    """Wrap the interpreter's builder and grid executor (once; the wrappers do nothing outside count())."""
    from triton.runtime import interpreter as interp

    if getattr(interp, "_playground_counting", False):
        return
    builder = interp.InterpreterBuilder
    load, store, dot = builder.create_masked_load, builder.create_masked_store, builder.create_dot
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas
    run = interp.GridExecutor.__call__

    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        if (launch := _launch[0]) is not None:
            launch.bytes_read += _true(mask) * _element_bytes(ptrs.get_element_ty())
            _attribute(launch, ptrs, mask, _element_bytes(ptrs.get_element_ty()), "r")
            _count_site(launch)
        return load(self, ptrs, mask, *args, **kwargs)

    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
        if (launch := _launch[0]) is not None:
            launch.bytes_written += _true(mask) * _element_bytes(ptrs.get_element_ty())
            _attribute(launch, ptrs, mask, _element_bytes(ptrs.get_element_ty()), "w")
        return store(self, ptrs, value, mask, *args, **kwargs)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if (launch := _launch[0]) is not None:
            m, k = a.data.shape[-2:]
            n = b.data.shape[-1]
            batch = math.prod(a.data.shape[:-2])
            name, products = a.dtype.scalar.name, 1
            if name == "fp32":  # an fp32 dot runs on the tensor cores only as TF32; "tf32x3" as three of them
                mode = str(input_precision).rsplit(".", 1)[-1].upper()
                name, products = ("fp32-ieee", 1) if mode == "IEEE" else ("fp32-tf32", 3 if mode == "TF32X3" else 1)
            launch.dot_flops[name] += products * 2 * batch * m * n * k
        if a.dtype.scalar.name in ("fp16", "bf16") and d.data.dtype == np.float32:
            # numpy has no fast 16-bit matmul: multiply in fp32 instead. Products of 16-bit floats are exact in
            # fp32 and a GPU accumulates them in fp32, so the result is the same, many times sooner.
            a = interp.TensorHandle(_as_fp32(a), interp.tl.float32)
            b = interp.TensorHandle(_as_fp32(b), interp.tl.float32)
        return dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    def create_atomic_rmw(self, op, ptr, val, mask, *args):
        if (launch := _launch[0]) is not None:
            nbytes = _true(mask) * _element_bytes(ptr.get_element_ty())
            launch.bytes_read += nbytes
            launch.bytes_written += nbytes
            _attribute(launch, ptr, mask, _element_bytes(ptr.get_element_ty()), "r")
            _attribute(launch, ptr, mask, _element_bytes(ptr.get_element_ty()), "w")
        return rmw(self, op, ptr, val, mask, *args)

    def create_atomic_cas(self, ptr, cmp, val, *args):
        if (launch := _launch[0]) is not None:
            nbytes = ptr.data.size * _element_bytes(ptr.get_element_ty())
            launch.bytes_read += nbytes
            launch.bytes_written += nbytes
            everything = np.ones(np.shape(ptr.data), dtype=bool)
            _attribute(launch, ptr, everything, _element_bytes(ptr.get_element_ty()), "r")
            _attribute(launch, ptr, everything, _element_bytes(ptr.get_element_ty()), "w")
        return cas(self, ptr, cmp, val, *args)

    def grid_call(self, *args, **kwargs):
        if not _sessions or _launch[0] is not None:
            return run(self, *args, **kwargs)
        name = self.fn.__name__
        exact = any(name in s.exact for s in _sessions)
        writer = next((s.outputs[name] for s in _sessions if name in s.outputs), None)
        strata = next((s.strata[name] for s in _sessions if name in s.strata), None)
        samples = [s.sample for s in _sessions if s.sample is not None]
        budgets = [s.seconds for s in _sessions if s.seconds is not None]
        launch = Launch(kernel=name, num_warps=kwargs.get("num_warps", 4))
        launch._source, launch._sites = self.fn.__code__.co_filename, defaultdict(int)
        _launch[0] = launch
        try:
            _run_grid(self, args, kwargs, None if exact or not samples else min(samples),
                      min(budgets) if budgets else None, strata)
        finally:
            _launch[0] = None
        if launch._sites:
            launch.trips = max(launch._sites.values()) / max(1, launch.programs)  # sites scaled to the grid
        for helper in ("_source", "_sites", "_order", "_starts", "_ends"):  # the attribution's: done with
            launch.__dict__.pop(helper, None)
        for session in _sessions:
            session.counter.records.append(launch)
        if writer is not None and launch.programs_run < launch.programs:
            import inspect

            signature = inspect.signature(self.fn)  # its parameters, less the launch options (num_warps, ...)
            bound = signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in signature.parameters})
            with uncounted():  # what the skipped programs would have written: bookkeeping, not the program's work
                writer(**bound.arguments)

    builder.create_masked_load, builder.create_masked_store = create_masked_load, create_masked_store
    builder.create_dot = create_dot
    builder.create_atomic_rmw, builder.create_atomic_cas = create_atomic_rmw, create_atomic_cas
    interp.GridExecutor.__call__ = grid_call
    interp._playground_counting = True


# ------------------------------------------------------------------------------------------------ aten


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


@contextlib.contextmanager
def _as_eager():
    """Run a custom op's implementation as eager code runs (no graph recorded): the op is dispatched below
    autograd, where composite ops (``reshape``, a ``to`` that changes nothing) reach the counter undecomposed, as
    host events eager code never makes; with the autograd keys back they decompose as they do outside an op."""
    keys = torch._C.DispatchKey
    excluded = torch._C._dispatch_tls_local_exclude_set()
    for key in (keys.AutogradFunctionality, keys.AutogradOther, keys.AutogradNestedTensor, keys.ADInplaceOrView):
        excluded = excluded.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), excluded), torch.no_grad():
        yield


def _dispatch_mode(counter: Counter):
    """The aten counter of one ``count()`` block: it records into that block's counter only (a nested block's
    mode sees each op too, as the op passes down the stack of modes, and records it into its own)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    _register_cpu_sdpa_flops()

    from .._custom_op import IMPLEMENTATIONS

    class _CountAten(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            implementation = IMPLEMENTATIONS.get(func._schema.name)
            if implementation is not None:  # our custom op (an op folder's api.py): count what it runs, not it
                with self, _as_eager():
                    return implementation(*args, **kwargs)
            out = func(*args, **kwargs)
            # inside a Triton launch, torch ops are the interpreter's own bookkeeping, not the program's
            if _launch[0] is None:
                launches = _aten_launches(func, args, kwargs, out)
                if launches:
                    counter.records += launches
                else:
                    counter.host.append((len(counter.records), "op"))
                if func._schema.name.split("::")[-1] in _SYNCS:
                    counter.host.append((len(counter.records), "sync"))
            return out

    return _CountAten()


# ------------------------------------------------------------------------------------------------ the block


def replay(counter: Counter) -> None:
    """Add what ``counter`` saw to every open ``count()`` block, as if it had run again there: for a call whose
    launches and host events are known to repeat exactly (the same routing of the same tokens)."""
    for session in _sessions:
        base = len(session.counter.records)
        session.counter.host += [(base + position, kind) for position, kind in counter.host]
        session.counter.records += counter.records


@contextlib.contextmanager
def uncounted():
    """Work inside this block is bookkeeping, not the program's (the tests' NaN-poisoning of fresh outputs)."""
    outer, _launch[0] = _launch[0], _launch[0] or Launch("uncounted")
    try:
        yield
    finally:
        _launch[0] = outer


_rt._uncounted[0] = uncounted  # the runtime's hook (rt.uncounted: the tests' fill, placeholders, peers' tables)


@contextlib.contextmanager
def count(*, sample: int | None = None, seconds: float | None = None, exact=(), outputs=None, strata=None,
          torch_only: bool = False):
    """Count every Triton launch (under the interpreter) and every aten op run inside the block.

    ``sample``: run at most this many programs of a launch and scale (see the module doc); ``seconds``: a sampled
    launch also stops once it has run a pair of programs and this long (a prefix of whole pairs keeps the sample's
    balance); ``exact``: names of kernels that always run whole (their outputs steer later launches); ``strata``:
    {kernel name: strata(grid, **the launch's arguments)} for kernels whose programs' work differs by data (the
    MoE's GEMM blocks: full, partly filled, past the last expert): lists of program ids of like work, each
    sampled and scaled on its own (see :func:`_run_grid`); ``outputs``:
    {kernel name: writer} for such kernels that are too slow to run whole under the interpreter: they are sampled
    like any other, then ``writer(**the launch's arguments)`` writes, uncounted, what the whole grid would (with
    PyTorch: the MoE router's top-k). Triton kernels are counted only under the interpreter:
    on a GPU they are compiled and nothing executes op by op where it could be counted, so ``count()`` refuses unless
    ``torch_only=True`` says the block runs PyTorch code alone.
    """
    from .. import _runtime as rt

    if rt.INTERPRET:
        _install()
    elif not torch_only:
        raise RuntimeError("kernels.count() counts Triton kernels under the interpreter (TRITON_INTERPRET=1); this "
                           "process compiles them for a GPU. Pass torch_only=True to count PyTorch code alone.")
    session = _Session(Counter(), sample, seconds, frozenset(exact), dict(outputs or {}), dict(strata or {}))
    _sessions.append(session)
    try:
        with _dispatch_mode(session.counter):
            yield session.counter
    finally:
        _sessions.remove(session)
