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
import time
from collections import defaultdict

import numpy as np
import torch

from .. import _runtime as _rt
from .aten import _SYNCS, _aten_launches, _register_cpu_sdpa_flops
from .attribution import (
    _as_fp32,
    _attribute,
    _count_site,
    _element_bytes,
    _pipelined_loops,
    _regions,
    _set_trips,
    _track,
    _true,
    counting_range,
)
from .records import Counter, Launch

__all__ = ["Counter", "Launch", "count", "replay", "uncounted"]


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
                    _pipelined_loops[0] = 0  # a program starts outside every loop (one that failed may not have)
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


def _install():
    """Wrap the interpreter's builder and grid executor (once; the wrappers do nothing outside count())."""
    from triton.runtime import interpreter as interp

    if getattr(interp, "_playground_counting", False):
        return
    builder = interp.InterpreterBuilder
    load, store, dot = builder.create_masked_load, builder.create_masked_store, builder.create_dot
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas
    run = interp.GridExecutor.__call__
    patch_lang_core = interp._patch_lang_core

    def counted_patch_lang_core(lang, scope):
        """The interpreter's binding of a language module, with a ``tl.range`` that marks the loops Triton pipelines."""
        patch_lang_core(lang, scope)
        scope.set_attr(lang, "range", counting_range(lang.range, lambda: _launch[0] is not None))

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
        _set_trips(launch)
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
    interp._patch_lang_core = counted_patch_lang_core
    interp._playground_counting = True


# ------------------------------------------------------------------------------------------------ aten (aten.py)


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
