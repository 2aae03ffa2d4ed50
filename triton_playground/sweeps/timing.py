"""Measuring by timing: :class:`Timer` times one provider on one case.

Timing is ``triton.testing.do_bench`` (median, 20th and 80th percentile) on a GPU. Under the interpreter there is
no device to time; a wall-clock median stands in, and every row says ``device=interpreter``: those numbers say
how long the interpreter took, nothing about the kernels' speed. ``bwd`` times the backward alone, each
repetition on a graph from a fresh forward run outside the timed region (see :func:`mode_work`).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import triton

from triton_playground.kernels import _runtime as rt
from triton_playground.kernels.spec import Case


class Timer:
    """Times each provider (``ms``, ``ms_p20``, ``ms_p80``, ``peak_mb``) against ceilings measured on this device.

    With ``counts`` (the default), each row also carries the counters' columns (``flops_exec``, ``bytes_exec``,
    ``launches``, ...) of the same case, counted under the interpreter by CPU worker processes while the device
    times (:class:`sweeps.modeled.Modeled`); the timed ``ms`` is the row's, never the model's.
    """

    stand_ins: dict = {}

    def __init__(self, counts: bool = True, workers: int | None = None):
        from triton_playground.sweeps.modeled import Modeled

        self.counts = Modeled(workers=workers or max(1, min(8, (os.cpu_count() or 2) // 2))) if counts else None
        self.device = rt.backend()
        self.real_sizes = not rt.INTERPRET
        self.notice = ("" if self.real_sizes else
                       "Interpreter timings: the kernels run under the Triton interpreter on the CPU, at tiny sizes. "
                       "These timings measure the interpreter, NOT kernel performance.")

    def ceilings(self) -> dict:
        return measure_device()

    def prepare(self, groups, todo):
        """Count the groups' cases in the background workers (see the class doc); yield each once counted."""
        if self.counts is None:
            yield from groups
        else:
            yield from self.counts.prepare(groups, todo)

    def measure(self, fn, case: Case, mode: str, *, provider: str = "ours", spec=None, key=None) -> dict:
        columns = self._timed(fn, case, mode)
        if self.counts is not None and self.counts.ready(key, provider):
            try:
                counted = self.counts.measure(None, None, mode, provider=provider, spec=spec, key=key)
            except Exception:  # noqa: BLE001  (what could not be counted leaves the counter columns empty)
                counted = {}
            columns.update({k: v for k, v in counted.items() if k != "ms"})  # the model's ms is not this row's
        return columns

    def _timed(self, fn, case: Case, mode: str) -> dict:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        setup, work = mode_work(fn, case, mode)
        work() if setup is None else work(setup())  # warm-up outside the timing (compilation, tuning)
        ms, p20, p80 = bench(work, setup)
        return {"ms": ms, "ms_p20": p20, "ms_p80": p80,
                "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def mode_work(fn, case: Case, mode: str):
    """(setup, work): ``work()`` (when setup is None) or ``work(setup())`` does ``mode``'s work once; only ``work``
    is measured.

    ``bwd`` measures the backward alone, and each backward needs a graph of its own: a graph walked once with
    ``retain_graph=True`` and reused would be the cheaper measurement, but torch.compile's backward donates (frees)
    the buffers its graph saved, so it refuses a retained graph. ``setup`` is therefore a fresh forward per
    repetition, run outside the measured region, so the number is the backward's alone (as in tritonbench's bwd
    mode). Timing ``fwd+bwd`` and subtracting ``fwd`` would also leave the forward out, with the noise of two
    measurements in the difference.
    """
    inputs = case.grad_inputs()

    def forward():
        outs = fn(*case.args, **case.kwargs)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]

    if mode == "fwd":
        return None, lambda: fn(*case.args, **case.kwargs)
    cotangents = [torch.randn_like(o) for o in forward()]
    if mode == "fwd+bwd":
        return None, lambda: torch.autograd.grad(forward(), inputs, cotangents)
    return forward, lambda outs: torch.autograd.grad(outs, inputs, cotangents)


def measure_device() -> dict:
    """The two ceilings of the roofline, measured once per run: copy bandwidth and bf16 (CPU: fp32) matmul rate."""
    if rt.INTERPRET:
        n, m, dtype, device = 1 << 24, 512, torch.float32, "cpu"
    else:
        n, m, dtype, device = 1 << 28, 8192, torch.bfloat16, "cuda"
    src = torch.randn(n, device=device, dtype=torch.float32).to(dtype)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))[0]
    copy_gbps = 2 * src.numel() * src.element_size() / ms / 1e6
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    ms = bench(lambda: a @ b)[0]
    del src, dst, a, b
    return {"copy_gbps": copy_gbps, "matmul_tflops": 2 * m**3 / ms / 1e9}


# ------------------------------------------------------------------------------------------------ clocks


def bench(fn, setup=None) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``; with ``setup``, of ``fn(setup())``, where ``setup`` runs before
    every call and outside the timing (it makes what a call consumes, e.g. the graph a backward frees)."""
    if not rt.INTERPRET:
        if setup is None:
            return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
        return _do_bench_with_setup(fn, setup)
    return _wall_clock(fn, setup)


def _wall_clock(fn, setup=None) -> tuple[float, float, float]:
    """:func:`bench` under the interpreter: one warm-up, then 3 to 10 calls, as many as fit in about a second."""
    work = fn if setup is not None else (lambda _: fn())
    setup = setup or (lambda: None)
    work(setup())  # warm-up
    times, deadline = [], time.perf_counter() + 1.0
    while len(times) < 3 or (len(times) < 10 and time.perf_counter() < deadline):
        arg = setup()
        start = time.perf_counter()
        work(arg)
        times.append((time.perf_counter() - start) * 1e3)
        del arg  # the graph a backward walked goes before the next forward builds one
    return _summary(times)


def _do_bench_with_setup(fn, setup, warmup_ms=25, rep_ms=100) -> tuple[float, float, float]:
    """``triton.testing.do_bench``'s method for ``fn(setup())``: do_bench has no per-call setup, so its loop is
    written out here. As there, L2 is flushed before each call and CUDA events bracket the call alone; ``setup``'s
    kernels are queued before the start event, so the GPU has finished them when that event's time is taken and
    they are not in the measurement."""
    driver = triton.runtime.driver.active
    device = driver.get_device_interface()
    cache = driver.get_empty_cache_for_benchmark()

    def once(events=None):
        arg = setup()
        driver.clear_cache(cache)
        if events:
            events[0].record()
        fn(arg)
        if events:
            events[1].record()

    def timed_calls(n):
        events = [(device.Event(enable_timing=True), device.Event(enable_timing=True)) for _ in range(n)]
        for pair in events:
            once(pair)
        device.synchronize()
        return [start.elapsed_time(end) for start, end in events]

    once()
    device.synchronize()
    estimate_ms = max(statistics.mean(timed_calls(5)), 1e-4)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        once()
    return _summary(timed_calls(max(1, int(rep_ms / estimate_ms))))


def _summary(times: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80), interpolated linearly as do_bench's quantiles are."""
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]
