"""The sweep: time every provider of an op over its cases and append one CSV row per measurement.

For each op (its ``OpSpec``), each dims from ``spec.sweep_cases(gpu)``, each dtype and mode, one set of inputs
is made and every provider is timed on it: ``ours`` (the Triton op), ``eager`` (the PyTorch reference),
``compile`` (``torch.compile`` of the reference) and the op's own peers. ``speedup`` is eager's time over the
provider's, from the same run. Rows are appended as they finish; a rerun with the same CSV skips the rows that
finished (resume), and a case that fails or runs out of memory becomes a row with its ``error``, which the next run
retries (its new row replaces the error row).

Timing is ``triton.testing.do_bench`` (median, 20th and 80th percentile) on a GPU. Under the interpreter there is
no device to time; a wall-clock median stands in, and every row says ``device=interpreter``: those numbers say
how long the interpreter took, nothing about the kernels' speed. ``bwd`` times the backward alone, each
repetition on a graph from a fresh forward run outside the timed region (see :func:`_timed_fn`).

Sizes: on a GPU, ``spec.sweep_cases(True)``, ``max_seqlen`` dropping the longer ones. On the CPU the op's own list
is tiny; a ``max_seqlen`` beyond it extends it (see :func:`sweep_cases`).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import pandas as pd
import torch
import triton
from tqdm import tqdm

from kernels import _runtime as rt
from kernels.spec import Case, OpSpec

COLUMNS = [
    "op", "provider", "mode", "dtype", "seqlen", "params", "ms", "ms_p20", "ms_p80", "tflops", "gbps",
    "pct_roofline", "speedup", "peak_mb", "device", "torch", "triton", "commit", "timestamp", "config", "error",
    "copy_gbps", "matmul_tflops",
]
KEY = ["op", "provider", "mode", "dtype", "seqlen", "params"]
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


# ------------------------------------------------------------------------------------------------ measuring


def _summary(times: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80), interpolated linearly as do_bench's quantiles are."""
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def bench(fn, setup=None) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds of ``fn()``; with ``setup``, of ``fn(setup())``, where ``setup`` runs before
    every call and outside the timing (it makes what a call consumes, e.g. the graph a backward frees)."""
    if not rt.INTERPRET:
        if setup is None:
            return tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8]))
        return _do_bench_with_setup(fn, setup)
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


def commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def _timed_fn(fn, case: Case, mode: str):
    """(setup, work): ``work()`` (when setup is None) or ``work(setup())`` does ``mode``'s work once; only ``work``
    is timed.

    ``bwd`` times the backward alone, and each backward needs a graph of its own: a graph walked once with
    ``retain_graph=True`` and reused would be the cheaper measurement, but torch.compile's backward donates (frees)
    the buffers its graph saved, so it refuses a retained graph. ``setup`` is therefore a fresh forward per
    repetition, run outside the timed region, so the number is the backward's alone (as in tritonbench's bwd
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


def _config_of(spec: OpSpec) -> str:
    parts = [f"{k.name}: {k.last_config()}" for k in spec.kernels if k.last_config() is not None]
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ the sweep


def sweep_cases(spec: OpSpec, *, gpu: bool, max_seqlen=None) -> list[dict]:
    """The dims one op is swept over: ``spec.sweep_cases(gpu)`` without the cases longer than ``max_seqlen``.

    On the CPU, a ``max_seqlen`` beyond the op's (tiny) list also extends it: each panel (the dims besides
    seqlen) gets its longest seqlen doubled until ``max_seqlen``, at the CPU shapes. The GPU's shapes would not do:
    they start at 512 tokens of hidden 1024 and up, hours under the interpreter; and keeping the panel keeps the
    added points on the same plot lines as the default ones.
    """
    base = spec.sweep_cases(gpu)
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


def plan(spec: OpSpec, *, gpu: bool, dtypes=None, modes=None, max_seqlen=None):
    """The (dims, dtype, mode) cases of one op, in sweep order."""
    dtypes = dtypes or (list(spec.sweep_dtypes) if gpu else [torch.float32])
    modes = [m for m in (modes or spec.modes) if m in spec.modes]
    cases = sweep_cases(spec, gpu=gpu, max_seqlen=max_seqlen)
    return [(dims, dtype, mode) for dims in cases for dtype in dtypes for mode in modes]


def params_of(dims: dict) -> str:
    return json.dumps({k: v for k, v in dims.items() if k != "seqlen"}, sort_keys=True)


class NothingToRun(ValueError):
    """The selection (ops, modes, dtypes, providers, max_seqlen) leaves no case to measure."""


def _append_row(out: Path, row: dict, replaces_error_row: bool) -> None:
    """Append one row; when it retries a failed case, the failed case's row goes, so each key stays unique.

    The retry is written before the error row is dropped, and the file is replaced in one rename: an interrupted
    run leaves either the old error row or the new row, never neither.
    """
    new = pd.DataFrame([row], columns=COLUMNS)
    if not replaces_error_row:
        new.to_csv(out, mode="a", header=not out.exists() or not out.stat().st_size, index=False)
        return
    # As text, so that the rows kept are written back exactly as they were read.
    old = pd.read_csv(out, dtype=str, keep_default_na=False)
    key = [str(row[k]) for k in KEY]
    kept = old[~(old[KEY] == key).all(axis=1)]
    tmp = out.with_name(out.name + ".tmp")
    kept.to_csv(tmp, index=False)
    new.to_csv(tmp, mode="a", header=False, index=False)
    os.replace(tmp, out)


def run(specs: list[OpSpec], out: Path, *, dtypes=None, modes=None, wanted_providers=None, max_seqlen=None):
    gpu = not rt.INTERPRET
    skip_compile = wanted_providers is None and not gpu
    if skip_compile:
        wanted_providers = ["eager", "ours"] + [p for s in specs for p in s.peers]  # compiling on a CPU: minutes

    work = []
    for spec in specs:
        provs = providers(spec, wanted_providers)
        for dims, dtype, mode in plan(spec, gpu=gpu, dtypes=dtypes, modes=modes, max_seqlen=max_seqlen):
            work.append((spec, provs, dims, dtype, mode))
    if not work:
        limits = ([f"mode {' or '.join(modes)}"] if modes else []) + (
            [f"seqlen <= {max_seqlen}"] if max_seqlen is not None else [])
        raise NothingToRun(f"nothing to run: no case of {', '.join(s.name for s in specs)} has "
                           f"{' and '.join(limits) or 'this selection'}")
    if not gpu:
        print("No GPU: the kernels run under the Triton interpreter on the CPU, at tiny sizes. "
              "These timings measure the interpreter, NOT kernel performance.", flush=True)
    if skip_compile:
        print("(torch.compile providers are skipped under the interpreter; name them with --providers to add them.)")

    # done: the rows that finished, skipped on resume. failed: rows with an error, run again; the retry's row
    # replaces the error row.
    done, failed, eager_ms = set(), set(), {}
    if out.exists() and out.stat().st_size:
        prev = pd.read_csv(out, dtype={"params": str})
        for row in prev.itertuples(index=False):
            key = (row.op, row.provider, row.mode, row.dtype, int(row.seqlen), row.params)
            (failed if isinstance(row.error, str) and row.error else done).add(key)
            if row.provider == "eager" and pd.notna(row.ms):
                eager_ms[(row.op, row.mode, row.dtype, int(row.seqlen), row.params)] = row.ms
        print(f"resuming: {len(done)} finished rows in {out}"
              + (f"; {len(failed)} failed ones are retried where selected" if failed else ""))
    out.parent.mkdir(parents=True, exist_ok=True)

    ceilings = measure_device()
    device = rt.backend()
    fixed = {"device": device, "torch": torch.__version__, "triton": triton.__version__, "commit": commit(), **ceilings}
    print(f"device: {device}; copy {ceilings['copy_gbps']:.0f} GB/s, matmul {ceilings['matmul_tflops']:.1f} TFLOP/s")

    total = sum(len(w[1]) for w in work)
    bar = tqdm(total=total, desc="sweep", unit="run")
    factories_made: dict = {}
    unavailable: list[str] = []
    written = 0
    for spec, provs, dims, dtype, mode in work:
        dname, params, seqlen = DTYPE_NAMES[dtype], params_of(dims), dims["seqlen"]
        todo = [p for p in provs if (spec.name, p, mode, dname, seqlen, params) not in done]
        bar.update(len(provs) - len(todo))
        if not todo:
            continue
        bar.set_postfix_str(f"{spec.name} {mode} {dname} seqlen={seqlen}")
        try:
            case = spec.make_case(dims, dtype, rt.DEVICE, requires_grad=mode != "fwd")
        except Exception as e:  # noqa: BLE001  (a case that cannot even be built is recorded, not fatal)
            case, case_error = None, f"{type(e).__name__}: {e}"
        for provider in todo:
            row = {"op": spec.name, "provider": provider, "mode": mode, "dtype": dname, "seqlen": seqlen,
                   "params": params, **fixed, "error": ""}
            key = (spec.name, provider)
            if key not in factories_made:
                try:
                    factories_made[key] = provs[provider]()
                except Exception as e:  # noqa: BLE001  (e.g. a peer's library missing: its rows say so)
                    factories_made[key] = e
                if factories_made[key] is None:  # the peer declares itself unavailable (no GPU, old torch)
                    unavailable.append(f"{spec.name}/{provider}")
            fn = factories_made[key]
            if fn is None:
                bar.update(1)
                continue
            try:
                if case is None:
                    raise RuntimeError(case_error)
                if isinstance(fn, Exception):
                    raise fn
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                setup, timed = _timed_fn(fn, case, mode)
                timed() if setup is None else timed(setup())  # warm-up outside the timing (compilation, tuning)
                ms, p20, p80 = bench(timed, setup)
                flops, nbytes = spec.flops(dims, mode), spec.bytes_moved(dims, dtype, mode)
                roof_ms = max(flops / (ceilings["matmul_tflops"] * 1e9), nbytes / (ceilings["copy_gbps"] * 1e6))
                row.update(ms=ms, ms_p20=p20, ms_p80=p80, tflops=flops / ms / 1e9, gbps=nbytes / ms / 1e6,
                           pct_roofline=100 * roof_ms / ms,
                           peak_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
                           config=_config_of(spec) if provider == "ours" else "")
                if provider == "eager":
                    eager_ms[(spec.name, mode, dname, seqlen, params)] = ms
                base = eager_ms.get((spec.name, mode, dname, seqlen, params))
                row["speedup"] = base / ms if base else None
            except Exception as e:  # noqa: BLE001  (OOM, a peer that cannot run: recorded, the sweep goes on)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            row_key = (spec.name, provider, mode, dname, seqlen, params)
            _append_row(out, row, replaces_error_row=row_key in failed)
            failed.discard(row_key)
            written += 1
            bar.update(1)
        del case
    bar.close()
    if unavailable:
        print("not available here, skipped: " + ", ".join(unavailable))
    if written:
        print(f"wrote {out} ({written} rows)" + ("" if gpu else "  (interpreter timings: not performance)"))
    else:
        print(f"nothing new: every selected row is already in {out}")
    return out


def all_specs() -> dict:
    """Every sweepable spec: the ops of the registry, then the model-level sweeps."""
    from kernels import OPS

    specs = dict(OPS)
    try:
        from models.sweep import SPECS as MODEL_SPECS
    except ImportError:
        MODEL_SPECS = ()
    specs.update({s.name: s for s in MODEL_SPECS})
    return specs


def default_out(name: str) -> Path:
    return Path(os.environ.get("SWEEP_OUT", "out")) / f"{name}-{'interpreter' if rt.INTERPRET else 'gpu'}.csv"
