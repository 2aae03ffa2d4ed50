"""The description every op folder's ``spec.py`` exports (``SPECS``); tests and sweeps are generated from it.

An op folder (``kernels/ops/<op>/``) holds its Triton kernel(s), its PyTorch reference, its public function with
its custom ops (``api.py``) and its :class:`OpSpec` s (``spec.py``). ``kernels/registry.py`` lists the folders:
adding an op touches its own folder, one line there, and the few places docs/design.md names ("What a new op
touches").

Vocabulary used by every field below:

* ``dims``: a plain dict of sizes and knobs that fully describes one problem, e.g.
  ``{"rows": 4, "seqlen": 512, "hidden": 1024}``. Sweeps put ``dims["seqlen"]`` on the x-axis.
* ``Case``: concrete inputs made from dims — ``fn(*case.args, **case.kwargs)``.
* ``mode``: ``"fwd"``, ``"bwd"`` or ``"fwd+bwd"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch


@dataclasses.dataclass
class Case:
    """Inputs of one call. Tensors in ``args`` that require grad are the ones tests and sweeps differentiate."""

    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)

    def grad_inputs(self) -> list[torch.Tensor]:
        return [a for a in self.args if isinstance(a, torch.Tensor) and a.requires_grad]


class NotComparable(Exception):
    """Raised by a peer for a case its library does not cover (FLA's attention without causal masking, say): the
    sweep writes no row for that provider and case, and lists it once with this message."""


@dataclasses.dataclass(frozen=True)
class BadInput:
    """A call that must raise ``error`` with a message matching ``match`` (a regex naming the argument)."""

    label: str
    make: Callable[[], Case]
    error: type
    match: str


def plateau_and_rest(pid, work, top=None) -> list:
    """Two strata for ``OpSpec.count_strata``: the programs ``pid`` whose ``work`` is ``top`` (default: the most),
    and the others in order of their work, so the counters' mirrored pairs match a light program with a heavy one
    (exact where the work rises evenly: a ramp of attention's walks, partly filled blocks)."""
    import numpy as np

    top = work.max() if top is None else top
    rest = pid[work != top]
    return [pid[work == top], rest[np.argsort(work[work != top], kind="stable")]]


def idle_apart(pid, work) -> list:
    """:func:`plateau_and_rest` of the programs with work, after a stratum of those without: where most programs
    may be idle (a weight gradient's empty experts under skewed routing), a mirrored pair of an idle and a busy
    program would count half the grid busy."""
    busy = work > 0
    return [pid[~busy], *(plateau_and_rest(pid[busy], work[busy]) if busy.any() else [])]


def call(*args, **kwargs) -> Callable[[], Case]:
    """A :class:`BadInput`'s ``make``: the op called with exactly these arguments."""
    return lambda: Case(args, kwargs)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    # ours: the Triton-backed, autograd-aware entry point.
    fn: Callable
    # the PyTorch reference, same signature; tests run it in float64.
    reference: Callable
    # make_case(dims, dtype, device, *, contiguous=True, requires_grad=False, seed=0) -> Case.
    # contiguous=False must give non-contiguous views (the layouts real callers pass).
    make_case: Callable[..., Case]
    # hypothesis strategy of dims for the property tests (sized for the CPU interpreter when big=False).
    dims: Callable[[bool], Any]
    # dims for the every-config test: small, but not a multiple of any tile, so every boundary is crossed.
    config_dims: dict
    # sweep_cases(gpu) -> list of dims, each with "seqlen" (the x-axis); the other keys name the plot panel, so
    # they must not vary with seqlen (derive token counts from dims["seqlen"] in make_case instead).
    sweep_cases: Callable[[bool], list]
    # flops(dims, mode) and bytes_moved(dims, dtype, mode): the least work and traffic, for the roofline.
    flops: Callable[[dict, str], float]
    bytes_moved: Callable[[dict, torch.dtype, str], float]
    # bound on ||ours - ref64|| / ||ref64|| per dtype (fp32 and fp16; bf16 is judged on the GPU against the
    # error of the reference run in bf16, see tests/checks.py). Gradients use grad_tolerance.
    tolerance: dict
    grad_tolerance: dict
    # the autotuned kernels of this op; the tests run each under every config.
    kernels: tuple = ()
    # extra sweep providers: name -> factory() -> callable with fn's signature (factories keep imports lazy).
    peers: dict = dataclasses.field(default_factory=dict)
    bad_inputs: tuple = ()
    # modes the op supports; "bwd" needs autograd through fn.
    modes: tuple = ("fwd", "bwd", "fwd+bwd")
    sweep_dtypes: tuple = (torch.bfloat16,)
    # the panels of sweep_cases(True) the default (quick) sweep plan keeps: each a dict of dims it must match
    # (e.g. {"head_dim": 128}); empty: the first panel. The plan's rule keeps a few sequence lengths of each.
    quick_panels: tuple = ()
    # whether torch.compile of the reference is a sweep provider.
    compile_reference: bool = True
    # dims always tested besides hypothesis' draws: the paths a small random draw may miss (a looped wide row...).
    examples: tuple = ()
    # dims the fp32 compile check (tests/compile_check.py) compiles besides config_dims: kernel variants the host
    # picks from sizes config_dims does not reach.
    compile_examples: tuple = ()
    # names of kernels the counters must run whole even when sampling (their outputs steer later launches: the MoE
    # router and dispatch); see kernels/perf/counters.py.
    count_exact: tuple = ()
    # {kernel name: writer(**its launch's arguments)}: kernels whose outputs steer later launches but that are too
    # slow to run whole under the interpreter; counted on a sample, then the writer puts what the whole grid
    # writes (kernels/perf/counters.py)
    count_outputs: dict = dataclasses.field(default_factory=dict)
    # {kernel name: strata(grid, **its launch's arguments)}: kernels whose programs' work differs by data (the MoE's
    # GEMM blocks: full, partly filled, past the last expert); the counters sample each list of program ids apart
    count_strata: dict = dataclasses.field(default_factory=dict)
    # whether a provider's work depends on values its matrix products compute (the MoE's router logits decide its
    # experts' GEMMs). When not, counting on real tensors leaves big matrix products uncomputed (sweeps/modeled.py).
    values_steer_work: bool = False
    # optional: check_outputs(ours, ref64, case) for outputs a relative norm cannot judge (e.g. integer ids).
    check_outputs: Callable | None = None
