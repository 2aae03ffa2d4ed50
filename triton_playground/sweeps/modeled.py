"""Measuring without a GPU: :class:`Modeled` counts each provider on each case and models it on an H100.

Each provider runs once per case under ``kernels.count()`` (the Triton interpreter's counters and the aten
counter, see ``kernels/perf/counters.py``): its forward, then its backward, each counted on its own, so one run
serves the ``fwd``, ``bwd`` and ``fwd+bwd`` rows of the case. A row's ``ms`` is the H100 model of those counts
(``kernels/perf/model.py``: device time per launch with L2 and the programs' own pace, the host's launches, the
timeline of both as ``do_bench`` times a call; checked against published H100 measurements by
``triton-playground validate``), ``bytes_dram`` what of the counted bytes the model sends to HBM, and ``device``
says ``model:H100``: a model of counted work, never a measured time.

* Real sizes. The cases are the GPU sweep's. A launch of more than ``sample`` programs runs a spread-out sample of
  them and is scaled (the ``counted`` column says how many ran); kernels whose outputs steer later launches
  run whole (``OpSpec.count_exact``: the MoE's dispatch) or, where that takes minutes, on a sample with their
  outputs then written by PyTorch (``OpSpec.count_outputs``: the MoE router). Persistent grids are sized for the
  H100's 132 SMs.
* PyTorch code (``eager``, SDPA) runs on fake tensors: the aten counter needs shapes only, so the eager
  attention's 16k x 16k score matrix is counted without being computed; where its shapes depend on values (the
  MoE reference's loop over the experts hit), the ops leading to those values are computed for real
  (``kernels/perf/shadow.py``). Triton kernels read memory: they run on the real inputs.
* bf16 is counted by running fp16: the interpreter computes bf16 wrong, and an fp16 run moves the same bytes, runs
  the same kernels and tiles and executes the same FLOPs at the same tensor-core peak (kernels/common/precision).
* Cases are counted by ``workers`` processes in parallel (the interpreter is single-threaded); their rows are
  written as each case's counts arrive, in order, so an interrupted sweep keeps every finished case.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import warnings

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from triton_playground import kernels
from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.perf import model as gpu
from triton_playground.kernels.perf.counters import Counter
from triton_playground.kernels.spec import Case, NotComparable

UNCOUNTABLE_COMPILE = ("torch.compile is not modeled: its fused Inductor kernels are generated code that neither "
                       "counter sees (aten ops vanish into them); time it on a GPU")
MAX_REAL_FLOPS = 110e9  # PyTorch code that fake tensors cannot run is computed for real up to this much work
DEFAULT_SAMPLE = 16  # programs run per launch of a bigger grid; more only sharpens estimates of uneven grids
DEFAULT_SECONDS = 1.0  # and a sampled launch stops after this long (two programs at least): GEMM programs at the
# real sizes take seconds each under the interpreter, and do equal work, so two of them count as well as sixteen


class Modeled:
    """A :class:`sweeps.runner.Measurer` whose ``ms`` is the H100 model of counted work."""

    device = gpu.label(gpu.H100)
    real_sizes = True
    stand_ins = {torch.bfloat16: torch.float16}
    notice = ("No GPU: every case is counted under the Triton interpreter at its real size and modeled on an H100 "
              "(device=model:H100): a model of counted work, checked against published H100 measurements "
              "(triton-playground validate), not a measured time.")

    def __init__(self, sample: int | None = DEFAULT_SAMPLE, workers: int | None = None,
                 seconds: float | None = DEFAULT_SECONDS):
        self.sample, self.seconds = sample, seconds
        self.workers = workers or min(2, os.cpu_count() or 1)
        self._phases: dict = {}  # (case key, provider) -> {"fwd": Counter, "bwd": Counter} or the exception

    def ceilings(self) -> dict:
        return gpu.ceilings(gpu.H100)

    # ---------------------------------------------------------------------------------------------- counting

    def prepare(self, groups, todo):
        """Count the cases of ``groups`` (lists of work items sharing one case; ``todo(item)``: its providers still
        to run) in ``workers`` processes; yield each group, in order, once its counts are in."""
        jobs = [_Job.of(group, self.sample, self.seconds, todo) for group in groups]
        in_process = rt.INTERPRET and (self.workers <= 1 or len(jobs) <= 1)
        pool = None if in_process else _pool(self.workers)
        results = map(_count_job, jobs) if in_process else pool.imap(_count_job, jobs)
        try:
            for group, job, phases in zip(groups, jobs, results):
                for provider, counted in phases.items():
                    self._phases[(job.key, provider)] = counted
                yield group
        finally:
            if pool is not None:
                pool.terminate()

    def ready(self, key, provider: str) -> bool:
        """Whether the counts of ``provider`` on the case ``key`` are in (the case need not be made again)."""
        return (key, provider) in self._phases

    def measure(self, fn, case: Case, mode: str, *, provider: str = "ours", spec=None, key=None) -> dict:
        if provider == "compile":
            raise NotImplementedError(UNCOUNTABLE_COMPILE)
        phases = self._phases.get((key, provider))
        if isinstance(phases, Exception):
            raise phases
        if phases is None or (mode != "fwd" and "bwd" not in phases):
            phases = count_phases(fn, case, mode != "fwd", self.sample, spec.count_exact if spec else (),
                                  self.seconds, outputs=spec.count_outputs if spec else None,
                                  values_steer_work=spec.values_steer_work if spec else True,
                                  strata=spec.count_strata if spec else None)
            # (a fallback: prepare() counted what it was given)
            self._phases[(key, provider)] = phases
        timed = [phases[phase] for phase in (("fwd", "bwd") if mode == "fwd+bwd" else (mode,))]
        counter = Counter([r for phase in timed for r in phase.records])
        sampled = [r for r in counter.records if r.programs_run < r.programs]
        return {
            "ms": gpu.modeled_ms(timed, gpu.H100), "flops_exec": counter.flops, "bytes_exec": counter.bytes,
            "bytes_dram": round(sum(gpu.dram_bytes(r, gpu.H100) for r in counter.records)),
            "launches": counter.launches, "programs": counter.programs,
            "counted": (f"{sum(r.programs_run for r in sampled)} of {sum(r.programs for r in sampled)} programs of "
                        f"{len(sampled)} launches run" if sampled else "every program"),
        }


def count_phases(fn, case: Case, backward: bool, sample, exact, seconds=None, flops=None, dtype=None,
                 outputs=None, values_steer_work: bool = True, strata=None) -> dict:
    """{"fwd": Counter, "bwd": Counter (when ``backward``)} of ``fn`` on ``case``, with the H100's grids.

    Fake tensors first: counting needs shapes only, so whatever runs on them (PyTorch code: eager, SDPA) is
    counted without computing anything. Where its shapes depend on values (the MoE reference's loop over the
    experts hit, packed attention's lengths), the chain of ops that leads to those values is computed for real
    (``kernels/perf/shadow.py``): the routing, not the experts' GEMMs. Triton kernels read real memory, so they fail
    on fake tensors at once and run on the real inputs. PyTorch code whose values cannot be had that way (an
    in-place write on the chain) runs on the real inputs too, but only while its ``flops`` (the op's least, when
    known) stay within what the CPU computes in a moment. ``dtype``: the dtype counted, where the case's
    floating inputs are a stand-in (fp16 for bf16): the fake tensors take it back, as PyTorch code may accept only
    it (``torch._grouped_mm`` takes bf16 alone), and never compute. Unless ``values_steer_work``, the matrix
    products PyTorch code runs on real tensors beside Triton kernels (Liger's MLP: torch's linears around its
    activation kernel) are counted and not computed (:class:`_Uncomputed`): minutes of CPU GEMMs whose values
    decide nothing."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    from triton_playground.kernels.perf.shadow import NotReplayable, RealOnDemand

    quiet = logging.getLogger("torch._subclasses.fake_tensor")  # it logs every op fake tensors cannot run
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        fake = _fake(case, dtype)
        # the fake mode stays on beneath the counter, so tensors the provider creates are fake too
        with fake.fake_mode, RealOnDemand(fake.fake_mode, fake.reals):
            return _count_phases(fn, fake, backward, sample, exact, seconds, outputs, strata)
    except (DataDependentOutputException, DynamicOutputShapeException, NotReplayable):
        if flops is not None and flops > MAX_REAL_FLOPS:
            raise RuntimeError(f"not counted at this size: its shapes depend on the data in a way that cannot be "
                               f"computed apart (kernels/perf/shadow.py), and its {flops / 1e9:.0f} GFLOP are too "
                               f"many to compute on the CPU (the limit is {MAX_REAL_FLOPS / 1e9:.0f})") from None
    except Exception:  # noqa: BLE001  (Triton kernels: they need real memory)
        pass
    finally:
        quiet.level = level
    with contextlib.nullcontext() if values_steer_work else _Uncomputed():
        return _count_phases(fn, case, backward, sample, exact, seconds, outputs, strata)


def _count_phases(fn, case: Case, backward: bool, sample, exact, seconds, outputs=None, strata=None) -> dict:
    with warnings.catch_warnings(), np.errstate(all="ignore"), rt.modeled_sms(gpu.H100.sms):
        # A sampled launch leaves the outputs of the programs it skipped unwritten (torch.empty), and later kernels
        # compute on them: numpy's overflow / invalid-value warnings from the interpreter say nothing of a count,
        # whose values are never results. And a Triton kernel tried on fake tensors (to learn that it needs real
        # memory) reads a fake tensor's data pointer, which torch warns of, before it fails and runs on real ones.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        with kernels.count(sample=sample, seconds=seconds, exact=exact, outputs=outputs, strata=strata) as fwd:
            outs = fn(*case.args, **case.kwargs)
        phases = {"fwd": fwd}
        if backward:
            outs = [o for o in (outs if isinstance(outs, (tuple, list)) else (outs,))
                    if isinstance(o, torch.Tensor) and o.requires_grad]
            cotangents = [torch.ones_like(o) for o in outs]  # made outside the count: not the backward's work
            with kernels.count(sample=sample, seconds=seconds, exact=exact, outputs=outputs, strata=strata) as bwd:
                torch.autograd.grad(outs, case.grad_inputs(), cotangents)
            phases["bwd"] = bwd
    return phases


class _Uncomputed(TorchDispatchMode):
    """Beneath the counters: a big matrix product on real tensors answers an uninitialised tensor of its output's
    shape rather than computing it (the counters above it have seen its operands and output). For code whose
    work its products' values do not steer (``OpSpec.values_steer_work``)."""

    PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "_grouped_mm"}
    LEAST_FLOPS = 1e8  # smaller products are computed: they take no time

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._schema.name.split("::")[-1] in self.PRODUCTS:
            meta_args, meta_kwargs = tree_map(lambda a: a.to("meta") if isinstance(a, torch.Tensor) else a,
                                              (args, kwargs))
            out = func(*meta_args, **meta_kwargs)
            operands = [a for a in args if isinstance(a, torch.Tensor)]
            inner = operands[-2].shape[-1] if len(operands) >= 2 else 1  # (…, m, k) @ (…, k, n)
            if 2 * out.numel() * inner >= self.LEAST_FLOPS:
                return torch.empty(out.shape, dtype=out.dtype, device=operands[0].device)
        return func(*args, **kwargs)


def _fake(case: Case, dtype=None) -> Case:
    """The case on fake tensors (same shapes, strides, dtypes and requires_grad; no memory)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)

    reals = {}

    def convert(a):
        if not isinstance(a, torch.Tensor):
            return a
        fake = mode.from_tensor(a)
        if dtype is not None and a.is_floating_point() and a.dtype != dtype:
            with mode:  # the stand-in's dtype back: outside any count, on fake tensors (nothing is copied)
                fake = fake.detach().to(dtype).requires_grad_(a.requires_grad)
        reals[id(fake)] = a
        return fake

    fake = Case(tuple(convert(a) for a in case.args), {k: convert(v) for k, v in case.kwargs.items()})
    fake.fake_mode, fake.reals = mode, reals
    return fake


# ------------------------------------------------------------------------------------------------ workers


class _Job:
    """What a worker needs to count one case: plain data (the spec is looked up again by name there)."""

    def __init__(self, op, dims, dtype, run_dtype, backward, providers, sample, seconds, key):
        self.op, self.dims, self.dtype, self.run_dtype = op, dims, dtype, run_dtype
        self.backward, self.providers, self.sample, self.seconds, self.key = backward, providers, sample, seconds, key

    @classmethod
    def of(cls, group, sample, seconds, todo):
        item = group[0]
        providers = list(dict.fromkeys(p for it in group for p in todo(it) if p != "compile"))
        job = cls(item.spec.name, item.dims, item.dtype, item.run_dtype,
                  any(it.mode != "fwd" for it in group), providers, sample, seconds, item.case_key())
        job.spec = item.spec  # in this process; a worker looks the spec up by name (specs hold lambdas)
        return job

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "spec"}


def _pool(workers: int):
    """Worker processes that count under the interpreter: forked from an interpreter process; from a GPU process,
    fresh ones started with TRITON_INTERPRET=1 and no visible GPU (Triton's mode is fixed when it is imported)."""
    if rt.INTERPRET:
        return multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init)
    saved = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")}
    os.environ.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    try:
        return multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _worker_init():
    torch.set_num_threads(1)


def _count_job(job: _Job) -> dict:
    """provider -> its phases, or the exception that stopped it (recorded in its rows by the parent)."""
    from triton_playground.sweeps.plan import all_specs, providers

    spec = getattr(job, "spec", None) or all_specs()[job.op]
    factories = providers(spec, None)
    try:
        case = spec.make_case(job.dims, job.run_dtype or job.dtype, rt.DEVICE, requires_grad=job.backward)
    except Exception as e:  # noqa: BLE001  (the parent records it in every row of the case)
        return {p: RuntimeError(f"{type(e).__name__}: {e}") for p in job.providers}
    out = {}
    for provider in job.providers:
        try:
            fn = factories[provider]()
            if fn is None:
                continue  # unavailable here: the parent's own factory says so too, and writes no row
            out[provider] = count_phases(fn, case, job.backward, job.sample, spec.count_exact, job.seconds,
                                         spec.flops(job.dims, "fwd+bwd" if job.backward else "fwd"), job.dtype,
                                         spec.count_outputs, spec.values_steer_work, spec.count_strata)
        except NotComparable as e:  # the peer does not cover this case: kept as it is, the parent writes no row
            out[provider] = e
        except Exception as e:  # noqa: BLE001
            out[provider] = RuntimeError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return out
