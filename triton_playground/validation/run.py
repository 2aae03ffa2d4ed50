"""Count every published measurement's program, model it, and hold the model against the measurement.

``rows()`` reads the shipped measurements (``data/liger_h100.csv``) and names each row's half: ``fit`` or
``held-out``, every other x value of each sweep (by its position in the sweep, fixed before any error was seen),
so a fitted constant never sees the rows its error is reported on. ``count(row)`` counts the row's timed call
(``programs.build``) under the interpreter's counters; ``model(counter, row)`` is the modeled milliseconds;
``table()`` puts them side by side; ``summary()`` gives the errors per op x mode and overall, per half, and the
provider-ranking accuracy.
"""

from __future__ import annotations

import gc
import gzip
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..kernels import _runtime as rt
from ..kernels import count as kernels_count
from ..kernels.perf import model as gpu
from . import programs

DATA = Path(__file__).parent / "data"
MEASUREMENTS = DATA / "liger_h100.csv"
COUNTS = DATA / "counts.pkl.gz"  # the counted programs of every row (``triton-playground validate --recount``)
SOURCE = "Liger-Kernel benchmark/data/all_benchmark_data.csv"
SAMPLE, SECONDS = 16, 1.0  # programs run per launch of a bigger grid, and its time budget (as the sweep's)
# Liger's MoE routing kernels steer later launches (their outputs are read back): counted whole, but for the
# scatter kernel, whose outputs are computed outside the count (programs._liger_routing)
EXACT = ("_moe_router_histogram_kernel", "_moe_router_prefix_sum_kernel")
# measured time under which a row is "small": the bounds on geomean and worst error are for rows of at least this
SMALL_S = 20e-6

# rows whose code cannot be run as it was measured: (kernel, provider, modes) -> why
EXCLUDED = {
    ("layer_norm", "liger", ("backward", "full")):
        "Liger's LayerNorm backward kernel changed after this measurement (#945: one program per row with fp32 "
        "atomics became a persistent grid with partial sums); liger-kernel 0.8.5 cannot run the measured one",
    ("megatron_rms_norm", "torch", ("forward", "backward", "full")):
        "torch.nn.RMSNorm is one fused CUDA kernel on a GPU (aten._fused_rms_norm and its backward) but a CPU build "
        "of torch decomposes it into 8 aten ops forward and 20 backward: the program counted here is not the one "
        "measured",
}


def _excluded(row) -> str:
    for (kernel, provider, modes), why in EXCLUDED.items():
        if row["kernel_name"] == kernel and row["kernel_provider"] == provider and row["kernel_operation_mode"] in modes:
            return why
    return ""


def row_key(row) -> tuple:
    return (row["kernel_name"], row["kernel_provider"], row["kernel_operation_mode"], int(row["x_value"]),
            row["extra_benchmark_config_str"])


def rows() -> pd.DataFrame:
    """The shipped measurements, one row each, with ``half`` (fit / held-out) and ``excluded`` (why, or '')."""
    df = pd.read_csv(MEASUREMENTS)
    sweep = ["kernel_name", "extra_benchmark_config_str"]
    position = df.groupby(sweep)["x_value"].rank(method="dense").astype(int) - 1
    df["half"] = np.where(position % 2 == 0, "fit", "held-out")
    df["excluded"] = [_excluded(r) for _, r in df.iterrows()]
    return df


# ------------------------------------------------------------------------------------------------ counting


def program_key(row) -> tuple:
    """The rows one program serves: a provider at one size (its three modes)."""
    return row_key(row)[:2] + row_key(row)[3:]


def is_heavy(row) -> bool:
    """Whether counting the row's program holds gigabytes (Liger's MoE on real tensors)."""
    return row["kernel_name"] == "fused_moe" and programs.runs_triton(row)


def count(rows_of_program) -> dict:
    """{row key: the counter of the row's timed call} for rows of one program. The inputs, modules and (for
    ``backward``) the forward made before timing are set up outside the count, sampled to one program a launch
    (their values are never results), and each call starts from do_bench's steady state (``Program.steady``)."""
    out = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # sampled launches leave most of their outputs unwritten, and later kernels compute on them: the values
        # are not results (only the counts are), so numpy's overflow / invalid-value warnings say nothing here
        warnings.simplefilter("ignore", RuntimeWarning)
        with rt.modeled_sms(gpu.H100.sms):
            program = None
            for row in rows_of_program:
                if program is None:
                    with kernels_count(sample=1, seconds=SECONDS, exact=EXACT):
                        program = programs.build(row)
                with kernels_count(sample=1, seconds=SECONDS, exact=EXACT):
                    call = program.call(row["kernel_operation_mode"])
                    program.steady()
                with kernels_count(sample=SAMPLE, seconds=SECONDS, exact=EXACT) as counter:
                    call()
                counter.records = [_light(r) for r in counter.records]
                out[row_key(row)] = counter
                del call
                if is_heavy(row):  # gigabytes of real tensors: each mode on inputs of its own, one at a time
                    program = None
                    gc.collect()
    return out


def _light(launch):
    """The launch with plain dicts (picklable, and smaller)."""
    launch.dot_flops, launch.requested = dict(launch.dot_flops), dict(launch.requested)
    return launch


def load_counts(path: Path = COUNTS) -> dict:
    if not path.exists():
        return {}
    with gzip.open(path, "rb") as f:
        return pickle.load(f)


def save_counts(counts: dict, path: Path = COUNTS) -> None:
    with gzip.open(path, "wb", compresslevel=9) as f:
        pickle.dump(counts, f, protocol=4)


def pending_programs(df: pd.DataFrame, counts: dict) -> list[list]:
    """The rows of ``df`` that can run and are not in ``counts``, grouped by program (one build serves each)."""
    groups: dict = {}
    for _, row in df.iterrows():
        if not row["excluded"] and row_key(row) not in counts:
            groups.setdefault(program_key(row), []).append(row)
    return list(groups.values())


# ------------------------------------------------------------------------------------------------ modeling


def model(counter, row, c: gpu.Constants = gpu.CONSTANTS, device: gpu.Device | None = None) -> dict:
    """The model's figures of one row's counted call, on the row's device (or ``device``)."""
    device = device or gpu.device_named(row["gpu_name"])
    return {"modeled_ms": 1e3 * gpu.timeline_seconds([counter], device, c),
            "device_ms": 1e3 * gpu.device_only_seconds([counter], device, c),
            "roofline_ms": 1e3 * sum(_roofline(r, device) for r in counter.records),
            "launches": counter.launches, "flops_exec": counter.flops, "bytes_exec": counter.bytes,
            "bytes_dram": sum(gpu.dram_bytes(r, device) for r in counter.records)}


def _roofline(launch, device) -> float:
    """The model before this validation (kernels/perf/h100.py until then): max(flops / peak, bytes_exec / HBM)
    + 4 us a launch, summed; kept beside the new one so the table shows both."""
    compute = sum(f / device.peak_flops[k] for k, f in launch.dot_flops.items())
    return max(compute, (launch.bytes_read + launch.bytes_written) / device.hbm_bytes_per_s) + 4e-6


def table(df: pd.DataFrame, counts: dict, c: gpu.Constants = gpu.CONSTANTS,
          device: gpu.Device | None = None) -> pd.DataFrame:
    """One row per measurement: what was measured, what was modeled, their ratio."""
    out = []
    for _, row in df.iterrows():
        record = {"source": SOURCE, "op": row["kernel_name"], "provider": row["kernel_provider"],
                  "mode": programs.MODES[row["kernel_operation_mode"]], "dtype": programs.config_of(row).get(
                      "dtype", "torch.bfloat16").removeprefix("torch."),
                  "x_name": row["x_name"], "x": int(row["x_value"]), "shape": row["extra_benchmark_config_str"],
                  "device": row["gpu_name"], "liger_version": row["liger_version"], "measured_on": row["timestamp"],
                  "measured_ms": row["y_value_50"], "measured_p20_ms": row["y_value_20"],
                  "measured_p80_ms": row["y_value_80"], "half": row["half"], "excluded": row["excluded"]}
        counter = counts.get(row_key(row))
        if counter is not None and not row["excluded"]:
            record.update(model(counter, row, c, device))
            record["ratio"] = record["modeled_ms"] / record["measured_ms"]
            # host-bound: the modeled call would take less than half as long if the host were free
            record["host_bound"] = bool(record["device_ms"] < 0.5 * record["modeled_ms"])
            record["small"] = bool(record["measured_ms"] < SMALL_S * 1e3)
        out.append(record)
    return pd.DataFrame(out)


def error(ratios) -> tuple[float, float]:
    """(geometric-mean error, worst error), an error being max(r, 1/r) of a ratio r."""
    errors = np.exp(np.abs(np.log(np.asarray(ratios, dtype=float))))
    return (float(np.exp(np.mean(np.log(errors)))), float(errors.max())) if len(errors) else (math.nan, math.nan)


def ranking(t: pd.DataFrame) -> tuple[int, int]:
    """(pairs ordered right, pairs): for each shape and mode where two providers were measured, whether the model
    orders them as the measurement did (a tie within 5% measured counts as right either way)."""
    right = total = 0
    for _, group in t.dropna(subset=["modeled_ms"]).groupby(["op", "mode", "shape", "x"]):
        values = group[["measured_ms", "modeled_ms"]].to_numpy()
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                (m1, p1), (m2, p2) = values[i], values[j]
                total += 1
                close = abs(m1 - m2) <= 0.05 * max(m1, m2)
                right += close or (m1 < m2) == (p1 < p2)
    return right, total


def summary(t: pd.DataFrame) -> pd.DataFrame:
    """Errors per op x mode, per half, and overall: of every row; of the rows measured at >= 20 us that the model
    does not call host-bound; of the host-bound rows; and the provider ranking."""
    t = t.dropna(subset=["ratio"])
    out = []
    groups = [((op, mode), g) for (op, mode), g in t.groupby(["op", "mode"])] + [(("all", "all"), t)]
    for (op, mode), g in groups:
        for half in ("fit", "held-out"):
            h = g[g["half"] == half]
            small, host_bound = h["small"].astype(bool), h["host_bound"].astype(bool)
            big = h[~small & ~host_bound]
            host = h[host_bound]
            gm, worst = error(h["ratio"])
            gm_big, worst_big = error(big["ratio"])
            right, pairs = ranking(h)
            out.append({"op": op, "mode": mode, "half": half, "rows": len(h), "geomean_error": gm,
                        "worst_error": worst, "rows_ge_20us": len(big), "geomean_error_ge_20us": gm_big,
                        "worst_error_ge_20us": worst_big, "host_bound_rows": len(host),
                        "worst_error_host_bound": error(host["ratio"])[1],
                        "ranking_right": right, "ranking_pairs": pairs})
    return pd.DataFrame(out)

