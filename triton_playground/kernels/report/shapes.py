"""The shapes the report compiles at: the GPU sweep's own cases (``OpSpec.sweep_cases(gpu=True)``), which are the
real model shapes — attention at head dims 64 and 128 (with and without a sliding window), the MLP at
Persimmon-8B's (hidden 4096, inner 16384) and GPT-2's (768, 3072), the MoE at OLMoE-1B-7B's (hidden 2048,
inner 1024, 64 experts, top-8), the norms at hidden 1024/4096/8192, RoPE at head dims 64/128, routing at 64
experts, top-8. Taking them from the sweep keeps the report and the tuner's real choices in step.

A *panel* is a sweep case without its ``seqlen`` (one shape; the sweep varies the sequence length across it).
What is compiled depends on the sequence length only through the constexprs it selects (a window that starts
to hide keys, the MoE's 128-row tiles from 4096 tokens on), so the report compiles each panel at its shortest
case plus the first case of every variant that only a longer one launches (``collect.py`` finds them).

Inputs are built without computing them: compile-only mode runs nothing, and only shapes, strides, dtypes and
alignment reach the compiler. :func:`build_case` makes the spec's case on fake tensors and swaps them for
uninitialised real ones (integer tensors zeroed, so no host-side size is read from garbage, unless the maker built
them for real outside fake mode: varlen attention's prefix sums); a ``make_case``
that reads its own data (the MoE's tie separation) runs for real with its random draws replaced by zeros.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..spec import Case


def panel_of(dims: dict) -> tuple:
    """A sweep case's panel: its dims without ``seqlen``, as a hashable key."""
    return tuple(sorted((k, v) for k, v in dims.items() if k != "seqlen"))


def panel_labels(cases: list[dict]) -> dict[tuple, str]:
    """{panel: label}: each label names the dims that vary across the op's panels (a single panel: all dims)."""
    panels = list(dict.fromkeys(panel_of(c) for c in cases))
    keys = [k for k, _ in panels[0]] if panels else []
    varying = [k for k in keys if len({dict(p).get(k) for p in panels}) > 1] or keys
    return {p: " ".join(f"{k}={dict(p)[k]}" for k in varying) for p in panels}


def sweep_cases(spec) -> list[dict]:
    """The GPU sweep's cases of ``spec``, shortest first within each panel."""
    return sorted(spec.sweep_cases(True), key=lambda d: (str(panel_of(d)), d.get("seqlen", 0)))


class _ZeroRandom(TorchDispatchMode):
    """Random draws (randn, rand, normal_, uniform_) become zeros: a case whose maker reads its own data."""

    _RANDOM = {"randn", "rand", "normal", "normal_", "uniform", "uniform_"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in self._RANDOM:
            if name.endswith("_"):
                return args[0].zero_()
            size = args[0] if args and not isinstance(args[0], torch.Tensor) else args[0].shape
            return torch.zeros(size, dtype=kwargs.get("dtype") or torch.get_default_dtype())
        return func(*args, **kwargs)


def _real(t):
    from torch._subclasses.fake_tensor import FakeTensor

    if not isinstance(t, torch.Tensor):
        return t
    if not isinstance(t, FakeTensor) and not t.is_floating_point():
        return t  # integers a maker built for real on purpose (varlen attention's prefix sums steer its launches)
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
    return out.requires_grad_(t.requires_grad) if t.is_floating_point() else out.zero_()


def build_case(spec, dims: dict, dtype: torch.dtype) -> Case:
    """``spec``'s case at ``dims`` in ``dtype``, on the CPU, with the inputs' shapes and strides but no values."""
    grad = "bwd" in spec.modes
    from torch._subclasses.fake_tensor import FakeTensorMode

    quiet = logging.getLogger("torch._subclasses.fake_tensor")
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            case = spec.make_case(dims, dtype, "cpu", requires_grad=grad)
    except Exception:  # noqa: BLE001  (a maker that reads its data: build it for real, without random draws)
        with _ZeroRandom():
            case = spec.make_case(dims, dtype, "cpu", requires_grad=grad)
    finally:
        quiet.level = level
    return Case(tuple(_real(a) for a in case.args), {k: _real(v) for k, v in case.kwargs.items()})


@contextlib.contextmanager
def as_on_gpu():
    """Undo the choices compile-only mode makes for its own check, so the report sees a GPU's launches: the MoE
    grouped GEMMs' row tile (compile-only always takes the 128-row worst case; a GPU takes 64 rows below 512
    pairs per expert)."""
    from ..ops.moe import api as moe_api

    saved = moe_api._pick_block_m
    moe_api._pick_block_m = lambda n_pairs, n_experts: 128 if n_pairs >= 512 * n_experts else 64
    try:
        yield
    finally:
        moe_api._pick_block_m = saved
