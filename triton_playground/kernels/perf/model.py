"""A model of an NVIDIA Hopper GPU running what the counters saw (``kernels.perf.counters``): the device time of
each launch, the host's time to issue it, and the timeline of both, as ``triton.testing.do_bench`` measures a call.

Checked against published H100 measurements by ``triton-playground validate`` (``triton_playground/validation``):
its constants that no datasheet gives are fitted there, on a named half of the rows, and the other half is the
error reported. Every term is a mechanism, the same for every kernel; no constant names a kernel or an op.

**Device time of one launch** (``device_seconds``)::

    max(sum_c F_c / peak_c, bytes_dram / bandwidth) + KERNEL_FIXED_S

* ``F_c``: counted matrix FLOPs of input class ``c`` (tensor-core bf16/fp16, TF32, fp32 IEEE), at the datasheet's
  dense peaks scaled by what a bf16 GEMM reaches on an H100 SXM (798 of 989 TFLOP/s).
* ``bytes_dram`` (**L2**): a tensor asked for more bytes than its extent is re-read (a norm's weight by every row's
  program, a GEMM's operand strips by every tile). Each tensor's bytes up to its extent reach HBM; its re-reads
  reach HBM only in the proportion that one trip of one wave of resident programs (they walk their loops in
  step) touches more than the 50 MB L2 holds (``1 - L2 / footprint``, at least 0). Aten ops read and write their
  operands once.
* **The programs' own pace** (``program_seconds``): a grid runs in waves of resident programs (an SM holds at most
  ``64 / num_warps`` of them: Hopper's 64 warps, 32 blocks), and a program streams at most ``num_warps ×
  warp_bytes_per_s`` (Little's law: each warp keeps its own loads in flight over their latency, so a program of
  16 warps has four times the bytes in flight of one of 4) and waits ``trip_s`` on each trip of a loop whose
  loads are not pipelined (``Launch.waited_trips``: Triton pipelines the loops that feed a ``tl.dot``, and the
  loads of a ``tl.range(..., num_stages >= 2)`` loop). So a persistent grid of one program per SM looping over
  rows without pipelining (Liger's norm backwards) stays well under HBM's rate, the more so the fewer its warps.
  Aten kernels are taken to fill the GPU at HBM's rate.
* ``KERNEL_FIXED_S``: a kernel's start and drain on the device, however small it is.

**Host time** (``host`` events of the counter): each Triton launch costs the host ``HOST_TRITON_S`` (Triton's
Python launcher: argument binding, the cache lookup, the driver call), each aten op that launches a kernel
``HOST_ATEN_S`` (the dispatcher and the CUDA launch), each aten op that launches nothing (views, allocations)
``HOST_OP_S``, and an op that reads a result back (``nonzero``, ``.item()``) makes the host wait for the device,
then ``SYNC_S``.

**The timeline** (``timeline_seconds``), as ``do_bench`` times a call: before each call it zeroes a 256 MB buffer
to flush L2 and records the start event behind it, so the device starts the call's first kernel only once that
memset is done (``FLUSH_BYTES / bandwidth``) and the host has that long to run ahead. A kernel starts when the host
has issued it and the device is free; the call ends when both are done. So host-bound calls (many tiny launches,
a loop that syncs per expert) are modeled as host-bound, and small kernels' launch costs hide behind the flush as
they do in a measurement.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

# ------------------------------------------------------------------------------------------------ devices

# What a bf16 GEMM reaches on an H100 SXM (this project's GPU run notes: 798 TFLOP/s) over the datasheet's dense
# peak (989.4): applied to every datasheet peak, of every device, since no other was measured.
_REACHED = 798 / 989.4
# A device-to-device copy on an H100 SXM reaches 3.0 TB/s of the datasheet's 3.35: the same ratio for every HBM.
_COPY = 3.0 / 3.35


@dataclasses.dataclass(frozen=True)
class Device:
    """One GPU model's constants. ``name`` is what ``torch.cuda.get_device_name()`` answers (Liger's data says
    the same); ``model`` is the short name written in sweep rows (``device=model:<model>``)."""

    name: str
    model: str
    sms: int
    hbm_bytes_per_s: float
    l2_bytes: int
    peak_flops: dict  # input class -> FLOP/s
    source: str


def _hopper(name, model, sms, hbm_tb_s, bf16_dense_tflops, tf32_dense_tflops, fp32_tflops, source) -> Device:
    bf16 = bf16_dense_tflops * 1e12 * _REACHED
    return Device(name=name, model=model, sms=sms, hbm_bytes_per_s=hbm_tb_s * 1e12 * _COPY, l2_bytes=50 * 2**20,
                  peak_flops={"bf16": bf16, "fp16": bf16, "fp32-tf32": tf32_dense_tflops * 1e12 * _REACHED,
                              "fp32-ieee": fp32_tflops * 1e12 * _REACHED, "fp64": fp32_tflops * 1e12 * _REACHED},
                  source=source)


# NVIDIA H100 Tensor Core GPU datasheet (nvidia.com, "H100 Tensor Core GPU", 2023): SXM5 / PCIe / NVL columns.
# Dense figures are the datasheet's sparse ones halved. SM counts: the Hopper architecture whitepaper (SXM5 132,
# PCIe 114); the NVL is the SXM5 die (132). L2: 50 MB on each.
DEVICES = {
    d.model: d for d in (
        _hopper("NVIDIA H100 80GB HBM3", "H100", 132, 3.35, 989.4, 494.7, 67.0,
                "H100 SXM5 80GB: datasheet 3.35 TB/s, 989 TFLOP/s bf16, 495 TF32, 67 fp32; 132 SMs"),
        _hopper("NVIDIA H100 NVL", "H100-NVL", 132, 3.9, 835.5, 417.5, 60.0,
                "H100 NVL 94GB: datasheet 3.9 TB/s, 1671/2 TFLOP/s bf16, 835/2 TF32, 60 fp32; 132 SMs"),
        _hopper("NVIDIA H100 PCIe", "H100-PCIe", 114, 2.0, 756.5, 378.0, 51.0,
                "H100 PCIe 80GB: datasheet 2.0 TB/s, 1513/2 TFLOP/s bf16, 756/2 TF32, 51 fp32; 114 SMs"),
    )
}
H100 = DEVICES["H100"]


def device_named(gpu_name: str) -> Device:
    """The device whose ``name`` is ``gpu_name`` (as a GPU or a measurement names itself)."""
    for device in DEVICES.values():
        if device.name == gpu_name:
            return device
    raise KeyError(f"no model of {gpu_name!r}; modeled: {[d.name for d in DEVICES.values()]}")


# ------------------------------------------------------------------------------------------------ constants


@dataclasses.dataclass(frozen=True)
class Constants:
    """The model's constants that no datasheet gives: each fitted by ``triton-playground validate --fit`` on the
    fit half of the published measurements (never the held-out half), the same for every kernel and device, and
    read from ``constants.json``; the defaults here are the starting point of the fit (orders of magnitude)."""

    host_triton_s: float = 20e-6  # host time to issue one Triton launch
    host_aten_s: float = 6e-6  # host time to dispatch and issue one aten op that launches a kernel
    host_op_s: float = 2e-6  # host time of an aten op that launches nothing (a view, an allocation)
    sync_s: float = 10e-6  # the host's round trip after the device caught up (a read-back)
    kernel_fixed_s: float = 2.5e-6  # a kernel's start and drain on the device
    warp_bytes_per_s: float = 1.5e9  # what one warp of a program streams (its loads in flight / their latency)
    trip_s: float = 2e-6  # one trip of a loop that waits for its loads (a load's latency, a block reduction)

    def replace(self, **changes) -> Constants:
        return dataclasses.replace(self, **changes)


CONSTANTS_FILE = Path(__file__).with_name("constants.json")  # written by ``triton-playground validate --fit``


def _fitted() -> Constants:
    """The fitted constants (``constants.json``), or the defaults above where it is missing."""
    if not CONSTANTS_FILE.exists():
        return Constants()
    return Constants(**json.loads(CONSTANTS_FILE.read_text())["constants"])


CONSTANTS = _fitted()
FLUSH_BYTES = 256 * 2**20  # triton.testing.do_bench zeroes this much before each timed call (L2 flush)
MAX_WARPS_PER_SM, MAX_PROGRAMS_PER_SM = 64, 32  # Hopper (CUDA C++ guide, compute capability 9.0)


# ------------------------------------------------------------------------------------------------ one launch


def resident_programs(launch, device: Device) -> int:
    """Programs of ``launch`` running at once: its grid, or what the SMs hold (by warps a program)."""
    per_sm = min(MAX_PROGRAMS_PER_SM, MAX_WARPS_PER_SM // max(1, launch.num_warps or 4))
    return max(1, min(launch.programs, device.sms * per_sm))


def dram_bytes(launch, device: Device) -> float:
    """The bytes of ``launch`` that reach HBM: each tensor once, its re-reads as far as L2 cannot hold them."""
    unique = launch.bytes_unique
    reread = launch.bytes_read + launch.bytes_written - unique
    if reread <= 0:
        return unique
    # one trip of one wave: the resident programs' share of each tensor's bytes, over the loop's trips
    share = min(1.0, resident_programs(launch, device) / max(1, launch.programs)) / max(1.0, launch.trips)
    wave = sum(min(launch.extents[i], n * share) for (i, _), n in launch.requested.items())
    miss = max(0.0, 1.0 - device.l2_bytes / wave) if wave > 0 else 0.0
    return unique + reread * miss


def program_seconds(launch, device: Device, c: Constants = CONSTANTS) -> float:
    """How long the grid's programs take when each runs at its own pace: waves of resident programs, each program
    streaming its bytes at most at ``num_warps × warp_bytes_per_s`` and, where its loop waits for its loads (not
    pipelined: no tl.dot in it, no ``tl.range(..., num_stages >= 2)``), one ``trip_s`` a trip."""
    if launch.source != "triton" or launch.programs == 0:
        return 0.0
    waves = math.ceil(launch.programs / resident_programs(launch, device))
    streaming = (launch.num_warps or 4) * c.warp_bytes_per_s
    per_program = (launch.bytes_read + launch.bytes_written) / launch.programs / streaming
    waited = getattr(launch, "waited_trips", None)
    waits = 0.0 if launch.dot_flops else (launch.trips if waited is None else waited) * c.trip_s
    return waves * (per_program + waits)


def device_seconds(launch, device: Device = H100, c: Constants = CONSTANTS) -> float:
    """Modeled device time of one counted launch."""
    compute = sum(flops / device.peak_flops[kind] for kind, flops in launch.dot_flops.items())
    memory = dram_bytes(launch, device) / device.hbm_bytes_per_s
    return max(compute, memory, program_seconds(launch, device, c)) + c.kernel_fixed_s


# ------------------------------------------------------------------------------------------------ a call


def _events(counter):
    """The counter's launches and host events in the order they happened: ("launch", record) / ("op"|"sync",)."""
    host = iter(sorted(counter.host, key=lambda e: e[0]))
    pending = next(host, None)
    for index, record in enumerate(counter.records):
        while pending is not None and pending[0] <= index:
            yield (pending[1], None)
            pending = next(host, None)
        yield ("launch", record)
    while pending is not None:
        yield (pending[1], None)
        pending = next(host, None)


def timeline_seconds(counters, device: Device = H100, c: Constants = CONSTANTS, *, flush: bool = True) -> float:
    """Modeled seconds of a call made of ``counters`` (one or more phases, in order) as ``do_bench`` times it:
    the device starts after the L2 flush (``flush``), the host may run ahead by that long, and the call ends when
    both host and device are done."""
    start = FLUSH_BYTES / device.hbm_bytes_per_s if flush else 0.0
    host, free = 0.0, start
    for counter in counters:
        for kind, record in _events(counter):
            if kind == "op":
                host += c.host_op_s
            elif kind == "sync":
                host = max(host, free) + c.sync_s
            else:
                host += c.host_triton_s if record.source == "triton" else c.host_aten_s
                free = max(free, host) + device_seconds(record, device, c)
    return max(host, free) - start


def modeled_ms(counters, device: Device = H100, c: Constants = CONSTANTS) -> float:
    """Modeled milliseconds of a call made of ``counters`` (its phases, in order), as ``do_bench`` times it."""
    return 1e3 * timeline_seconds(counters, device, c)


def ceilings(device: Device = H100) -> dict:
    """The device's ceilings, in the sweep's units (the plots' roofline lines)."""
    return {"copy_gbps": device.hbm_bytes_per_s / 1e9, "matmul_tflops": device.peak_flops["bf16"] / 1e12}


def label(device: Device = H100) -> str:
    """The ``device`` a modeled sweep row names: ``model:H100``."""
    return f"model:{device.model}"


def device_only_seconds(counters, device: Device = H100, c: Constants = CONSTANTS) -> float:
    """The launches' device times back to back (no host): what a GPU kept busy by a faster host would take."""
    return sum(device_seconds(r, device, c) for counter in counters for r in counter.records)
