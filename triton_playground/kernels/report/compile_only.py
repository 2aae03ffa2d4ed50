"""Compile-only mode: compile kernels for an H100 (sm_90) through Triton's real pipeline without a GPU.

Shared by ``tests/compile_check.py`` and the report (``triton-playground report``). Two steps, in this order:

1. :data:`ENVIRONMENT` must be in ``os.environ`` before ``kernels`` (hence Triton) is imported: the compiler
   backend, not the interpreter, and ``KERNELS_COMPILE_ONLY=1`` so every ``Tuned`` launch compiles and runs
   nothing (``kernels/_runtime.py``). A process that imported ``kernels`` otherwise must start again
   (:func:`reexec`).
2. :func:`install` makes a stand-in driver the active one when there is no GPU: just enough of a CUDA driver for
   ``JITFunction.warmup`` (a device, a stream and the sm_90 target). ptxas ships with Triton, so each launch
   goes down to a cubin.
"""

from __future__ import annotations

import os
import sys

ENVIRONMENT = {"TRITON_INTERPRET": "0", "KERNELS_COMPILE_ONLY": "1"}


def active() -> bool:
    """Whether this process compiles instead of interpreting (its environment was set before kernels loaded)."""
    from .. import _runtime as rt

    return rt.COMPILE_ONLY and not rt.INTERPRET


def reexec(module: str, argv: list[str]) -> None:
    """Run ``python -m module *argv`` again in compile-only mode, in place of this process."""
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], {**os.environ, **ENVIRONMENT})


class StandInDriver:
    """Just enough of a CUDA driver for JITFunction.warmup: the device, a stream and the target (``arch``)."""

    def __init__(self, arch: int = 90):
        self.arch = arch

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


def install(arch: int = 90, *, force: bool = False) -> bool:
    """Make the stand-in driver active unless a GPU of that ``arch`` is there (``force``: always). Returns whether
    it did: with a real driver, compiled kernels can also be loaded (``n_regs``, ``n_spills``)."""
    import torch
    from triton.runtime.driver import driver

    if not force and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        if 10 * major + minor == arch:
            return False
    driver.set_active(StandInDriver(arch))
    # Nothing compiled here ever runs, so no source lines for a profiler: LLVM and ptxas make the same code
    # without them (debug info never steers code generation), in 14% less time. Checked on the MLP's 126 report
    # rows: every column the same but the hash (the setting is part of Triton's cache key, so no cached kernel of
    # the other kind is ever picked up).
    from triton import knobs

    knobs.compilation.disable_line_info = True
    return True
