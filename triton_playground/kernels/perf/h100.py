"""A roofline model of one H100 SXM, fed by counted work (``kernels.perf.counters``).

For each launch, with ``F_c`` its counted matrix FLOPs of input class ``c`` and ``B`` its counted bytes:

    modeled_s(launch) = max(sum_c F_c / PEAK_FLOPS[c], B / HBM_BYTES_PER_S) + LAUNCH_OVERHEAD_S

and an op call's modeled time is the sum over its launches (launches run one after another on one stream).

This is an *attainable bound*, not a prediction: it assumes every launch runs at the better of its two roofs
and nothing else. It ignores L2 reuse (counted bytes are bytes asked of memory, so a kernel that re-reads tiles
from L2 is modeled slower than it runs), occupancy and tail effects (a grid of a few programs cannot fill 132
SMs, yet is modeled as if it could), pipeline stalls, bank conflicts, register spills and the rate of
elementwise arithmetic (only ``tl.dot`` / matmul FLOPs are counted; exp and division are free here).

Every constant, and where it comes from:
"""

# bf16/fp16 dense tensor-core rate: 798 TFLOP/s measured on an H100 SXM with a bf16 GEMM (this project's GPU run
# notes; the datasheet's dense figure is 989 TFLOP/s, which no real GEMM reaches). fp16 runs at the bf16 rate on
# Hopper (datasheet: the same peak); the measured bf16 figure is used for both.
TENSOR_16BIT_FLOPS = 798e12
# fp32 with input_precision="ieee" does not use the tensor cores: the datasheet's FP32 (non-tensor) peak, 67
# TFLOP/s, scaled by the same measured/datasheet ratio as bf16 (798/989), since no fp32 GEMM was measured.
FP32_FLOPS = 67e12 * 798 / 989
# TF32 tensor cores: the datasheet's dense 494.7 TFLOP/s, scaled by the same ratio.
TF32_FLOPS = 494.7e12 * 798 / 989
# HBM3: 3.0 TB/s measured on an H100 SXM with a device-to-device copy (the datasheet gives 3.35 TB/s).
HBM_BYTES_PER_S = 3.0e12
# One kernel launch as seen from a PyTorch program on a GPU that is kept busy: ~4 us between back-to-back small
# kernels. An assumption of order of magnitude (CUDA's documented launch latency is a few microseconds), not a
# measurement of this project; it matters only for ops of many tiny launches.
LAUNCH_OVERHEAD_S = 4e-6

# Streaming multiprocessors of an H100 SXM: persistent grids are sized by it while a model is counted.
SMS = 132

PEAK_FLOPS = {
    "bf16": TENSOR_16BIT_FLOPS,
    "fp16": TENSOR_16BIT_FLOPS,
    "fp32-tf32": TF32_FLOPS,
    "fp32-ieee": FP32_FLOPS,
    "fp64": 67e12 * 798 / 989,  # the reference's own dtype; never a provider's
}
DEVICE = "model:H100"


def launch_seconds(launch, scale: float = 1.0) -> float:
    """Modeled seconds of one counted launch whose FLOPs and bytes are multiplied by ``scale``."""
    compute = sum(flops * scale / PEAK_FLOPS[kind] for kind, flops in launch.dot_flops.items())
    memory = (launch.bytes_read + launch.bytes_written) * scale / HBM_BYTES_PER_S
    return max(compute, memory) + LAUNCH_OVERHEAD_S


def modeled_ms(counter, scale: float = 1.0) -> float:
    """Modeled milliseconds of everything a counter saw (launches in sequence)."""
    return 1e3 * sum(launch_seconds(launch, scale) for launch in counter.records)


def ceilings() -> dict:
    """The model's ceilings, in the sweep's units (for the plots' roofline lines)."""
    return {"copy_gbps": HBM_BYTES_PER_S / 1e9, "matmul_tflops": TENSOR_16BIT_FLOPS / 1e12}
