"""What a sweep runs: the work items (op × dims × dtype × mode, each measured under every provider) and the
providers themselves.

Sizes: on a GPU, ``spec.sweep_cases(True)``, ``max_seqlen`` dropping the longer ones. On the CPU the op's own list
is tiny; a ``max_seqlen`` beyond it extends it (see :func:`sweep_cases`).

Providers: ``eager`` (the PyTorch reference, first: speedups are over it), ``ours`` (the Triton op), ``compile``
(``torch.compile`` of the reference) and the op's own peers. Each is a factory, called once per op and run
(:class:`ProviderFns`), so imports and compilation stay lazy and a missing one is reported once.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.spec import Case, OpSpec

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


class NothingToRun(ValueError):
    """The selection (ops, modes, dtypes, providers, max_seqlen) leaves no case to measure."""


def all_specs() -> dict:
    """Every sweepable spec: the ops of the registry, then the model-level sweeps."""
    from triton_playground.kernels import OPS

    specs = dict(OPS)
    try:
        from triton_playground.models.sweep import SPECS as MODEL_SPECS
    except ImportError:
        MODEL_SPECS = ()
    specs.update({s.name: s for s in MODEL_SPECS})
    return specs


# ------------------------------------------------------------------------------------------------ cases


def params_of(dims: dict) -> str:
    """The dims besides seqlen, as the ``params`` column writes them: they name the plot panel."""
    return json.dumps({k: v for k, v in dims.items() if k != "seqlen"}, sort_keys=True)


# The default plan (``full=False``): what a newcomer's first sweep runs in minutes on 2 cores. Of the GPU's cases,
# the op's ``quick_panels`` (its first panel where it names none) at these sequence lengths, or the panel's longest
# where it stops short of the last: a speedup curve up to the real sizes, a few points each.
QUICK_SEQLENS = (1024, 4096, 16384)


def _in_quick_plan(spec: OpSpec, dims: dict, cases: list[dict]) -> bool:
    panels = spec.quick_panels or ({k: v for k, v in cases[0].items() if k != "seqlen"},)
    if not any(all(dims.get(k) == v for k, v in panel.items()) for panel in panels):
        return False
    longest = max(d["seqlen"] for d in cases if params_of(d) == params_of(dims))
    return dims["seqlen"] in QUICK_SEQLENS or (dims["seqlen"] == longest and longest < QUICK_SEQLENS[-1])


def sweep_cases(spec: OpSpec, *, gpu: bool, max_seqlen=None, full: bool = True) -> list[dict]:
    """The dims one op is swept over: ``spec.sweep_cases(gpu)`` (of the GPU's, only the quick plan's unless
    ``full``: see ``QUICK_SEQLENS``) without the cases longer than ``max_seqlen``.

    On the CPU, a ``max_seqlen`` beyond the op's (tiny) list also extends it: each panel (the dims besides
    seqlen) gets its longest seqlen doubled until ``max_seqlen``, at the CPU shapes. The GPU's shapes would not do:
    they start at 512 tokens of hidden 1024 and up, hours under the interpreter; and keeping the panel keeps the
    added points on the same plot lines as the default ones.
    """
    base = spec.sweep_cases(gpu)
    if gpu and not full:
        base = [d for d in base if _in_quick_plan(spec, d, base)]
    last_of_panel = {params_of(dims): i for i, dims in enumerate(base)}
    cases = []
    for i, dims in enumerate(base):
        if max_seqlen is None or dims["seqlen"] <= max_seqlen:
            cases.append(dims)
        if gpu or max_seqlen is None or last_of_panel[params_of(dims)] != i:
            continue
        seqlen = 2 * max(d["seqlen"] for d in base if params_of(d) == params_of(dims))
        while seqlen <= max_seqlen:
            cases.append({**dims, "seqlen": seqlen})
            seqlen *= 2
    return cases


# ------------------------------------------------------------------------------------------------ providers


def providers(spec: OpSpec, wanted: list[str] | None) -> dict:
    """name -> factory() -> callable (or None when unavailable). 'eager' always comes first: speedups need it."""
    out = {"eager": lambda: spec.reference, "ours": lambda: spec.fn}
    if spec.compile_reference:
        out["compile"] = lambda: torch.compile(spec.reference)
    out.update(spec.peers)
    if wanted is not None:
        out = {k: v for k, v in out.items() if k in wanted or k == "eager"}
    return out


def providers_but_compile(specs: list[OpSpec]) -> list[str]:
    """Every provider of ``specs`` but ``compile``: the CPU's default, as compiling on a CPU takes minutes."""
    return ["eager", "ours"] + [p for s in specs for p in s.peers]


class ProviderFns:
    """The callable of each (op, provider), made by its factory on first use and kept for the run.

    ``get`` answers the callable, the exception its factory raised (e.g. a peer's library missing: its rows say
    so), or None when the factory declares the provider unavailable here (no GPU, old torch), which is listed once
    in ``unavailable``.
    """

    def __init__(self):
        self._made: dict = {}
        self.unavailable: list[str] = []

    def get(self, item: WorkItem, provider: str):
        key = (item.spec.name, provider)
        if key not in self._made:
            try:
                self._made[key] = item.providers[provider]()
            except Exception as e:  # noqa: BLE001  (recorded in the provider's rows, not fatal)
                self._made[key] = e
            if self._made[key] is None:
                self.unavailable.append(f"{item.spec.name}/{provider}")
        return self._made[key]


# ------------------------------------------------------------------------------------------------ work items


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One op's case at one dtype and mode: one set of inputs, measured under each of ``providers``."""

    spec: OpSpec
    dims: dict
    dtype: torch.dtype
    mode: str
    providers: dict  # name -> factory, as :func:`providers` makes them
    run_dtype: torch.dtype | None = None  # the dtype the inputs are made in, when not ``dtype`` (a stand-in)

    def columns(self, provider: str) -> dict:
        """The row columns naming this item under ``provider`` (the CSV's key)."""
        return {"op": self.spec.name, "provider": provider, "mode": self.mode, "dtype": DTYPE_NAMES[self.dtype],
                "seqlen": self.dims["seqlen"], "params": params_of(self.dims)}

    def label(self) -> str:
        return f"{self.spec.name} {self.mode} {DTYPE_NAMES[self.dtype]} seqlen={self.dims['seqlen']}"

    def make_case(self) -> Case:
        return self.spec.make_case(self.dims, self.run_dtype or self.dtype, rt.DEVICE, requires_grad=self.mode != "fwd")

    def case_key(self) -> tuple:
        """What identifies the inputs (and so the counts) of this item, whatever its mode."""
        return (self.spec.name, params_of(self.dims), self.dims["seqlen"], DTYPE_NAMES[self.dtype])


def work_items(specs: list[OpSpec], *, gpu: bool, dtypes=None, modes=None, wanted_providers=None,
               max_seqlen=None, stand_ins=None, full: bool = True) -> list[WorkItem]:
    """Every item of the sweep, in order: per op, its cases × dtypes × modes (the op's own where not given).

    ``gpu``: the GPU's sizes and dtypes (a GPU run, or a modeled one) rather than the interpreter's tiny ones;
    ``full``: all of them, rather than the quick plan's few (``QUICK_SEQLENS``).
    ``stand_ins``: dtype -> the dtype its inputs are made in (the model counts bf16 by running fp16).
    Raises :class:`NothingToRun` when the selection leaves none.
    """
    items = []
    for spec in specs:
        provs = providers(spec, wanted_providers)
        spec_dtypes = dtypes or (list(spec.sweep_dtypes) if gpu else [torch.float32])
        spec_modes = [m for m in (modes or spec.modes) if m in spec.modes]
        items += [WorkItem(spec, dims, dtype, mode, provs, (stand_ins or {}).get(dtype))
                  for dims in sweep_cases(spec, gpu=gpu, max_seqlen=max_seqlen, full=full)
                  for dtype in spec_dtypes for mode in spec_modes]
    if not items:
        limits = ([f"mode {' or '.join(modes)}"] if modes else []) + (
            [f"seqlen <= {max_seqlen}"] if max_seqlen is not None else [])
        raise NothingToRun(f"nothing to run: no case of {', '.join(s.name for s in specs)} has "
                           f"{' and '.join(limits) or 'this selection'}")
    return items


# ------------------------------------------------------------------------------------------------ expected cost

# What a row is expected to cost, to balance a sweep over processes (sweeps/distributed.py). Only the proportions
# matter, and only roughly; what matters more is that the cost is deterministic and grows with the work. A row
# costs a fixed part (making the inputs, warm-up, the timing loop's budget; under the interpreter, setting up the
# counters) plus its least work timed on an H100's roofline (the op spec's FLOPs and bytes at that case) times the
# calls a row makes (warm-up, autotuning over the configs, repetitions; under the interpreter, the sampled
# programs). torch.compile's rows add a compilation.
ROW_SECONDS = 0.2
CALLS_PER_ROW = 1000
COMPILE_SECONDS = 5.0


def expected_cost(item: WorkItem, providers: list[str]) -> float:
    """Expected seconds (a rough model, see above) of measuring ``item`` under ``providers``."""
    from triton_playground.kernels.perf.model import H100

    name = DTYPE_NAMES[item.dtype]
    peak = H100.peak_flops["fp32-ieee" if name == "fp32" else name]
    try:
        work = max(float(item.spec.flops(item.dims, item.mode)) / peak,
                   float(item.spec.bytes_moved(item.dims, item.dtype, item.mode)) / H100.hbm_bytes_per_s)
    except Exception:  # noqa: BLE001  (a spec without formulas for these dims: the sequence length alone)
        work = item.dims["seqlen"] * 1e-7
    return sum(ROW_SECONDS + CALLS_PER_ROW * work + (COMPILE_SECONDS if p == "compile" else 0.0) for p in providers)
