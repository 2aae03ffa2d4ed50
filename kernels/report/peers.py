"""Peer kernels in the report (``--peers``): other projects' Triton kernels for the same ops, compiled the same way.

:data:`PEERS` is the hook: one :class:`Peer` per (project, op), whose ``launch(dims, dtype)`` builds inputs at
one of the op's sweep cases and calls the project's function once. While it runs, :func:`capturing` turns every
Triton launch (any ``JITFunction``, not only ours) into a compile that records the compiled kernel, so the
peer's kernels get the same columns as ours. A peer whose package is missing reports "not installed".
Liger-Kernel and flash-linear-attention are not installed yet: their two entries below are where they plug in,
and their calls are untested until the packages are there. Adding a peer (or an op of one) is an entry here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str  # shown as the row's kernel prefix, e.g. "liger"
    package: str  # the import name that must be present (e.g. "liger_kernel")
    op: str  # the op of kernels.OPS it is compared with; its sweep cases are the shapes
    launch: Callable  # launch(dims, dtype): build inputs, call the peer's function once

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


def _liger_rms_norm(dims, dtype):
    import torch
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    x = torch.empty(dims["seqlen"], dims["hidden"], dtype=dtype)
    LigerRMSNormFunction.apply(x, torch.empty(dims["hidden"], dtype=dtype), 1e-6)


def _fla_rms_norm(dims, dtype):
    import torch
    from fla.modules.layernorm import rms_norm

    x = torch.empty(dims["seqlen"], dims["hidden"], dtype=dtype)
    rms_norm(x, torch.empty(dims["hidden"], dtype=dtype), None)


PEERS: list[Peer] = [
    Peer("liger", "liger_kernel", "rms_norm", _liger_rms_norm),
    Peer("fla", "fla", "rms_norm", _fla_rms_norm),
]


@contextlib.contextmanager
def capturing():
    """Within the block, every Triton launch compiles (for the active target) instead of running; the compiled
    kernels are appended to the yielded list."""
    from triton.runtime.jit import JITFunction

    compiled, run = [], JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append(kernel)
        return kernel

    JITFunction.run = compile_only
    try:
        yield compiled
    finally:
        JITFunction.run = run


def peer_rows(ops, dtypes, analyse, log=print) -> list[dict]:
    """Rows for the peers of ``ops``: the compiled kernels' columns (``analyse(kernel)``) or why there are none."""
    import kernels
    from .collect import DTYPES

    rows = []
    for peer in (p for p in PEERS if p.op in ops):
        base = {"op": peer.op, "kernel": f"{peer.name}:-", "variant": "", "config": "", "cfg": -1}
        if not peer.installed():
            rows += [dict(base, dtype=d, error=f"{peer.package} not installed") for d in dtypes]
            log(f"  peer {peer.name} ({peer.package}): not installed")
            continue
        dims = kernels.OPS[peer.op].sweep_cases(True)[0]
        for d in dtypes:
            try:
                with capturing() as compiled:
                    peer.launch(dims, DTYPES[d])
            except Exception as e:  # noqa: BLE001  (a peer that fails is a row saying why)
                rows.append(dict(base, dtype=d, error=f"{type(e).__name__}: {e}"[:200]))
                continue
            rows += [dict(base, dtype=d, seqlen=dims.get("seqlen"), kernel=f"{peer.name}:{k.metadata.name}",
                          **analyse(k)) for k in compiled]
    return rows
