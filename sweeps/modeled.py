"""Measuring without a GPU: :class:`Modeled` counts one provider on one case and models it on an H100.

Each provider runs once per case under ``kernels.count()`` (the Triton interpreter's counters and the aten
counter, see ``kernels/perf/counters.py``): its forward, then, for the modes that need it, its backward, each
counted on its own. The row's ``ms`` is the H100 roofline model of those counts (``kernels/perf/h100.py``), and
``device`` says ``model:H100``: an attainable bound from counted work, never a measured time.

* Real sizes. The cases are the GPU sweep's. A launch of more than ``sample`` programs runs a stratified sample
  of them and is scaled (the ``counted`` column says how many ran); kernels whose outputs steer later launches
  (``OpSpec.count_exact``: the MoE router and dispatch) always run whole.
* PyTorch providers (``eager``, ``compile`` and the torch peers) run on fake tensors: the aten counter needs
  shapes only, so the eager attention's 16k x 16k score matrix is counted without being computed. A provider
  fake tensors cannot run (data-dependent shapes, as the MoE reference's per-expert loop) runs on the real inputs.
* bf16 is counted by running fp16: the interpreter computes bf16 wrong, and an fp16 run moves the same bytes, runs
  the same kernels and tiles and executes the same FLOPs at the same tensor-core peak (kernels/common/precision).
"""

from __future__ import annotations

import contextlib

import torch

import kernels
from kernels import _runtime as rt
from kernels.perf import h100
from kernels.perf.counters import Counter
from kernels.spec import Case

TORCH_PROVIDERS = ("eager", "compile")
DEFAULT_SAMPLE = 64  # programs run per launch; more only sharpens estimates of uneven grids (causal attention)


class Modeled:
    """A :class:`sweeps.runner.Measurer` whose ``ms`` is the H100 model of counted work."""

    device = h100.DEVICE
    real_sizes = True
    stand_ins = {torch.bfloat16: torch.float16}
    notice = ("No GPU: every case is counted under the Triton interpreter at its real size and modeled on an H100 "
              "(device=model:H100): an attainable bound from counted FLOPs and bytes, not a measured time.")

    def __init__(self, sample: int | None = DEFAULT_SAMPLE):
        self.sample = sample
        self._phases: dict = {}  # (case key, provider) -> {"fwd": Counter, "bwd": Counter}

    def ceilings(self) -> dict:
        return h100.ceilings()

    def measure(self, fn, case: Case, mode: str, *, provider: str = "ours", spec=None, key=None) -> dict:
        phases = self._phases.get((key, provider)) if key is not None else None
        if phases is None or (mode != "fwd" and "bwd" not in phases):
            phases = self._count(fn, case, mode, provider, spec)
            if key is not None:
                self._phases[(key, provider)] = phases
        counter = Counter([r for phase in (("fwd", "bwd") if mode == "fwd+bwd" else (mode,))
                           for r in phases[phase].records])
        sampled = [r for r in counter.records if r.programs_run < r.programs]
        return {
            "ms": h100.modeled_ms(counter), "flops_exec": counter.flops, "bytes_exec": counter.bytes,
            "launches": counter.launches, "programs": counter.programs,
            "counted": (f"{sum(r.programs_run for r in sampled)} of {sum(r.programs for r in sampled)} programs of "
                        f"{len(sampled)} launches sampled" if sampled else "all programs"),
        }

    def _count(self, fn, case: Case, mode: str, provider: str, spec) -> dict:
        exact = spec.count_exact if spec is not None else ()
        if provider in TORCH_PROVIDERS or getattr(fn, "torch_only", False):
            try:
                return self._count_phases(fn, _fake(case), mode, exact)
            except Exception:  # noqa: BLE001  (data-dependent shapes: count on the real inputs instead)
                pass
        return self._count_phases(fn, case, mode, exact)

    def _count_phases(self, fn, case: Case, mode: str, exact) -> dict:
        # On fake inputs the fake mode stays on, beneath the counter, so that tensors the provider creates (masks,
        # position tables) are fake too. Persistent grids are sized for the H100's SMs, as they would be there.
        with getattr(case, "fake_mode", contextlib.nullcontext()), rt.modeled_sms(h100.SMS):
            return self._count_phases_in(fn, case, mode, exact)

    def _count_phases_in(self, fn, case: Case, mode: str, exact) -> dict:
        with kernels.count(sample=self.sample, exact=exact) as fwd:
            outs = fn(*case.args, **case.kwargs)
        phases = {"fwd": fwd}
        if mode != "fwd":
            outs = [o for o in (outs if isinstance(outs, (tuple, list)) else (outs,))
                    if isinstance(o, torch.Tensor) and o.requires_grad]
            cotangents = [torch.ones_like(o) for o in outs]  # made outside the count: not the backward's work
            with kernels.count(sample=self.sample, exact=exact) as bwd:
                torch.autograd.grad(outs, case.grad_inputs(), cotangents)
            phases["bwd"] = bwd
        return phases


def _fake(case: Case) -> Case:
    """The case on fake tensors (same shapes, strides, dtypes and requires_grad; no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def convert(a):
        return mode.from_tensor(a) if isinstance(a, torch.Tensor) else a

    fake = Case(tuple(convert(a) for a in case.args), {k: convert(v) for k, v in case.kwargs.items()})
    fake.fake_mode = mode
    return fake
