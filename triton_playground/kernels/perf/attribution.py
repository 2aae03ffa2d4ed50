"""Where a Triton launch's bytes go (``kernels/perf/counters.py``): the tensors its loads and stores fall in (for
the L2 model), the loads each line of the kernel issues (its loops' trips), and the element sizes and masks of the
interpreter's handles."""

from __future__ import annotations

import sys

import numpy as np
import torch

from .records import Launch


def _element_bytes(tt_dtype) -> int:
    return max(1, tt_dtype.primitive_bitwidth // 8)


def _as_fp32(handle):
    from triton.runtime import interpreter as interp

    if handle.dtype.scalar.name == "bf16":  # kept as raw uint16 bits by the interpreter
        return interp._convert_float(handle.data, interp.tl.bfloat16, interp.tl.float32, None).view(np.float32)
    return handle.data.astype(np.float32)


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


_pipelined_loops = [0]  # how many ``tl.range(..., num_stages >= 2)`` loops the running program is inside


def pipelined_range(steps):
    """The steps of a ``tl.range(..., num_stages >= 2)`` loop. Triton pipelines every load of such a loop (sm_90:
    ``cp.async`` into a shared-memory ring, the report's LDGSTS), as it does the loads that feed a ``tl.dot``: the
    next trip's loads are in flight while this one computes, so its trips are not trips the program waits on
    (:func:`_count_site`, ``Launch.waited_trips``)."""
    _pipelined_loops[0] += 1
    try:
        yield from steps
    finally:
        _pipelined_loops[0] -= 1


def counting_range(plain, counting):
    """``tl.range`` as the counters see it: ``plain`` (the interpreter's), whose loops of ``num_stages`` 2 or more
    are marked pipelined while ``counting()``."""

    def range_(*args, num_stages=None, **kwargs):
        steps = plain(*args, **kwargs)
        stages = getattr(num_stages, "value", num_stages)
        return pipelined_range(steps) if counting() and (stages or 0) >= 2 else steps

    return range_


def _set_trips(launch: Launch) -> None:
    """A launch's loop trips a program, from its busiest load site scaled to the grid: ``trips`` over every site,
    ``waited_trips`` over those no pipelined loop issued (a launch of none waits one trip)."""
    if launch._sites:
        launch.trips = max(launch._sites.values()) / max(1, launch.programs)
        waited = [n for (_, pipelined), n in launch._sites.items() if not pipelined]
        launch.waited_trips = max(waited, default=launch.programs) / max(1, launch.programs)


def _count_site(launch: Launch) -> None:
    """One more load issued by the kernel's line that is running (a helper's loads count at the helper's call), keyed
    by (line, whether a pipelined loop issued it: :func:`pipelined_range`)."""
    source = getattr(launch, "_source", None)
    if source is None:
        return
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename != source:
        frame = frame.f_back
    if frame is not None:
        launch._sites[(frame.f_lineno, _pipelined_loops[0] > 0)] += 1


def _true(mask) -> int:
    """Elements a mask lets through: a TensorHandle's array, or a descriptor load/store's bare numpy array."""
    return int(np.count_nonzero(mask if isinstance(mask, np.ndarray) else mask.data))
