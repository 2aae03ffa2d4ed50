"""What the peer adapters of every op folder (``ops/<op>/peers.py``) share: the pinned versions, the import
guard, the interpreter's work-arounds. The peers are the Triton kernel libraries a user of this project would
otherwise pick, as sweep peers of our ops: Liger-Kernel (``liger-kernel==0.8.5``) and flash-linear-attention
(``fla-core==0.6.0``), pinned in the ``peers`` extra (``pip install .[peers]``; ``scripts/setup.sh`` installs it).

Each op's ``peers.py`` answers factories (``OpSpec.peers``): a callable with our op's signature, or None when its
library is not installed (the sweep lists it once as unavailable). The callables are thin adapters: they call the
library's own autograd Functions, whose Triton kernels then run wherever ours do (a GPU, the interpreter,
compile-only mode), so the counters, the H100 model and the static report see their kernels exactly as they see
ours. No kernel code is copied. This module imports only the runtime.

Under the interpreter and in compile-only mode there is no driver to benchmark with, so Liger's autotuned MoE
kernels are pinned to the one config Liger itself pins with ``LIGER_FUSED_MOE_AUTOTUNE=0`` (set here, before
Liger is imported); on a GPU they autotune as usual.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

from . import _runtime as rt

PINNED = {"liger-kernel": "0.8.5", "fla-core": "0.6.0"}

if rt.INTERPRET or rt.COMPILE_ONLY:
    os.environ.setdefault("LIGER_FUSED_MOE_AUTOTUNE", "0")


def module(name: str):
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


def scalar(value: float) -> float:
    return _InterpretedScalar(value) if rt.INTERPRET else float(value)


def liger_norm_module(name: str):
    """Liger's norm module; under the interpreter its ``rsqrt`` (libdevice's, which the interpreter does not
    implement: it returns None) is rebound to ``tl.rsqrt``, the same function. Compiled code keeps libdevice's."""
    mod = module(name)
    if mod is not None and rt.INTERPRET:
        import triton.language as tl

        # looked up at each call: the interpreter swaps tl's functions for its own only while a kernel runs
        mod.rsqrt = lambda x: tl.rsqrt(x)
    return mod


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
