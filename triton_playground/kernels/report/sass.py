"""What a compiled kernel's sm_90 code says, read with the tools Triton ships (``cuobjdump``, ``nvdisasm``).

* :func:`parse_res_usage`: ``cuobjdump -res-usage`` per function: ``REG`` registers a thread, ``STACK`` its stack
  frame in bytes (where spilled registers go), ``SHARED`` static shared memory (Triton's tiles are dynamic shared
  memory: ``metadata.shared``), ``LOCAL`` other local memory.
* :func:`parse_ptxas_log`: what ``ptxas -v`` says of spills (``spill stores`` / ``spill loads`` bytes): a stack
  frame is not always spilled registers (libdevice's sin/cos keep a 28-byte array there for huge arguments).
  The log is caught while Triton compiles (:func:`catching_ptxas_log`), else ptxas runs again on the PTX.
* :func:`parse_sass`: the opcodes of ``nvdisasm -c`` (one SASS instruction a line), counted by base opcode
  (``HGMMA.64x128x16.F32.BF16`` counts as ``HGMMA``); :data:`CLASSES` groups the ones the report shows.
  nvdisasm spends ~0.3 s starting up whatever the cubin's size, so :func:`sass_counts` disassembles many kernels
  in one run: their ``.text`` sections concatenated as a raw instruction binary (``nvdisasm -b SM90a``), each
  instruction given back to its kernel by its address (``tests/test_report.py`` checks it against one run a
  cubin).
* :func:`occupancy`: how many warps of the kernel an H100 SM holds, and what limits it (:data:`H100`).
* :func:`analyse`: all of it for one compiled kernel, cached on disk by the kernel's hash. With a real driver
  (a GPU) registers and local memory come from the loaded kernel (``n_regs``, ``n_spills``) instead.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import io
import json
import os
import re
import struct
import subprocess
import tempfile
from pathlib import Path

# SASS opcode classes the report counts (base opcodes; each column is the sum of its members).
CLASSES = {
    "hgmma": ("HGMMA",),  # Hopper warpgroup MMA (wgmma): the sm_90 tensor-core path
    "hmma": ("HMMA",),  # warp-level MMA (mma.sync): Ampere's path, a fraction of Hopper's peak
    "utmaldg": ("UTMALDG",),  # TMA: a tile copied global -> shared by the copy engine
    "ldgsts": ("LDGSTS",),  # cp.async: global -> shared without registers
    "ldg": ("LDG",),  # a plain global load into registers
    "bar": ("BAR",),  # CTA barriers (bar.sync / bar.arrive ...)
    "stl": ("STL",),  # local-memory stores: register spills
    "ldl": ("LDL",),  # local-memory loads: spill reloads
}
_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-fA-F]+\*/\s+(?:@!?U?P[0-9T]+\s+)?([A-Z][A-Z0-9_]*)")
_ADDRESS = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/")
_FUNCTION = re.compile(r"^\s*Function\s+(\S+?):?\s*$")
_FIELD = re.compile(r"([A-Z_]+(?:\[\d+\])?):(\d+)")
_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_CACHE_VERSION = 3  # bump when static_stats' fields change

# An H100 SXM (sm_90) multiprocessor, as the CUDA occupancy calculator models it.
H100 = dict(
    regs_per_sm=65536,  # 32-bit registers
    reg_unit=256,  # registers are allocated per warp in units of 256
    smem_per_sm=233472,  # 228 KB of shared memory (the largest carveout)
    smem_per_block=232448,  # 227 KB at most for one block (dynamic + static)
    smem_reserved=1024,  # the driver reserves 1 KB per block (cudaDevAttrReservedSharedMemoryPerBlock)
    max_warps=64,
    max_blocks=32,
)


def tool(name: str) -> str:
    """The path of a tool Triton ships (``cuobjdump``, ``nvdisasm``; knobs may point elsewhere)."""
    from triton import knobs

    return getattr(knobs.nvidia, name).path


def _run_on_cubin(args: list[str], cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([*args, f.name], check=True, capture_output=True, text=True).stdout


def parse_res_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage`` output -> {function: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": .., ...}}."""
    out, current = {}, None
    for line in text.splitlines():
        if m := _FUNCTION.match(line):
            current = out.setdefault(m.group(1), {})
        elif current is not None and (fields := _FIELD.findall(line)):
            current.update({k: int(v) for k, v in fields})
    return out


def res_usage(cubin: bytes) -> dict[str, dict[str, int]]:
    return parse_res_usage(_run_on_cubin([tool("cuobjdump"), "-res-usage"], cubin))


def parse_ptxas_log(text: str) -> dict[str, int]:
    """``ptxas -v`` output (one kernel) -> {"spill_stores": bytes, "spill_loads": bytes}; {} if it has none."""
    m = _PTXAS.search(text)
    return {"spill_stores": int(m.group(2)), "spill_loads": int(m.group(3))} if m else {}


def ptxas_log(ptx: str, arch: int) -> str:
    """``ptxas -v`` run on ``ptx`` as Triton runs it (for when Triton's own run was a cache hit)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        return subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", f"--gpu-name={sm_arch_from_capability(arch)}",
                               str(src), "-o", str(src.with_suffix(".o"))], check=True, capture_output=True,
                              text=True).stderr


@contextlib.contextmanager
def catching_ptxas_log():
    """Within the block, the ``ptxas -v`` log of each kernel Triton compiles is caught (Triton prints it when
    ``knobs.nvidia.dump_ptxas_log`` is on) into the yielded buffer instead of stdout."""
    from triton import knobs

    saved, knobs.nvidia.dump_ptxas_log = knobs.nvidia.dump_ptxas_log, True
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        knobs.nvidia.dump_ptxas_log = saved


def parse_sass(text: str) -> collections.Counter:
    """``nvdisasm -c`` / ``cuobjdump -sass`` output -> Counter of base opcodes (predicates and modifiers dropped)."""
    return collections.Counter(m.group(1) for line in text.splitlines() if (m := _INSTRUCTION.match(line)))


def sass(cubin: bytes) -> str:
    return _run_on_cubin([tool("nvdisasm"), "-c"], cubin)


def text_section(cubin: bytes, function: str) -> bytes:
    """The machine code of ``function`` in an ELF64 cubin: its ``.text.<function>`` section."""
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    # Elf64_Shdr: name, type, flags, addr, offset, size, link, info, addralign, entsize
    headers = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    for h in headers:
        if cubin[names + h[0]:cubin.index(b"\0", names + h[0])].decode() == f".text.{function}":
            return cubin[h[4]:h[4] + h[5]]
    raise ValueError(f"no .text.{function} section in the cubin")


def sass_counts(codes: list[bytes], arch: int = 90) -> list[collections.Counter]:
    """Base-opcode counts of each of ``codes`` (``.text`` sections), from one ``nvdisasm`` run over all of them."""
    starts, offset = [], 0
    for code in codes:
        starts.append(offset)
        offset += len(code)
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(b"".join(codes))
        f.flush()
        text = subprocess.run([tool("nvdisasm"), "-b", f"SM{arch}a" if arch == 90 else f"SM{arch}", f.name],
                              check=True, capture_output=True, text=True).stdout
    counts = [collections.Counter() for _ in codes]
    for line in text.splitlines():
        if m := _INSTRUCTION.match(line):
            address = int(_ADDRESS.match(line).group(1), 16)
            counts[bisect.bisect_right(starts, address) - 1][m.group(1)] += 1
    return counts


def classify(opcodes: collections.Counter) -> dict[str, int]:
    """The report's instruction columns: each class of :data:`CLASSES`, and ``sass`` = every instruction but NOP
    (the padding after the last branch)."""
    counts = {name: sum(opcodes[o] for o in members) for name, members in CLASSES.items()}
    counts["sass"] = sum(n for o, n in opcodes.items() if o != "NOP")
    return counts


def occupancy(regs: int, warps: int, smem: int, sm: dict = H100) -> tuple[int, str]:
    """(warps per SM, limiter) for blocks of ``warps`` warps using ``regs`` registers a thread and ``smem`` bytes
    of shared memory (dynamic + static). The limiter names every bound that is reached: ``regs``, ``smem``,
    ``warps`` (the 64-warp cap) or ``blocks`` (32 blocks an SM); ``smem>block`` if one block cannot launch."""
    if smem > sm["smem_per_block"]:
        return 0, "smem>block"
    per_warp = -(-max(regs, 1) * 32 // sm["reg_unit"]) * sm["reg_unit"]
    bounds = {
        "regs": (sm["regs_per_sm"] // per_warp) // warps,
        "smem": sm["smem_per_sm"] // (smem + sm["smem_reserved"]),
        "warps": sm["max_warps"] // warps,
        "blocks": sm["max_blocks"],
    }
    blocks = min(bounds.values())
    return blocks * warps, "+".join(k for k, v in bounds.items() if v == blocks)


def _cache_dir() -> Path:
    from triton import knobs

    return Path(os.environ.get("KERNELS_REPORT_CACHE") or Path(knobs.cache.dir) / "kernels-report")


def static_stats(kernels: list) -> list[dict]:
    """Resources and instruction counts of each compiled kernel read from its cubin, spills from its ptxas log
    (``kernel.ptxas_log`` when the compile was caught, else ptxas again), cached on disk under the kernel's hash.
    The kernels not cached yet are disassembled together (:func:`sass_counts`)."""
    paths = [_cache_dir() / f"{k.hash}.v{_CACHE_VERSION}.json" for k in kernels]
    stats = [json.loads(p.read_text()) if p.exists() else None for p in paths]
    todo = [i for i, s in enumerate(stats) if s is None]
    codes = [text_section(kernels[i].asm["cubin"], kernels[i].metadata.name) for i in todo]
    arch = kernels[todo[0]].metadata.target.arch if todo else 90
    for i, opcodes in zip(todo, sass_counts(codes, arch) if todo else []):
        kernel = kernels[i]
        usage = res_usage(kernel.asm["cubin"]).get(kernel.metadata.name, {})
        spills = parse_ptxas_log(getattr(kernel, "ptxas_log", "")) or parse_ptxas_log(
            ptxas_log(kernel.asm["ptx"], kernel.metadata.target.arch))
        stats[i] = {"regs": usage.get("REG", 0), "stack": usage.get("STACK", 0), "local": usage.get("LOCAL", 0),
                    "smem_static": usage.get("SHARED", 0), **spills, **classify(opcodes)}
        paths[i].parent.mkdir(parents=True, exist_ok=True)
        tmp = paths[i].with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stats[i]))
        tmp.replace(paths[i])
    return stats


def analyse(kernels: list, *, from_driver: bool = False) -> list[dict]:
    """Every per-kernel column of the report for each of ``kernels`` (CompiledKernels).

    ``from_driver`` (a GPU of the target arch is active): load the kernel and take registers and local memory from
    the driver, as Triton does (``n_regs``; ``n_spills`` is the local size in 4-byte words). Otherwise they come
    from ``cuobjdump -res-usage``: the same numbers, read from the cubin."""
    out = []
    for kernel, cached in zip(kernels, static_stats(kernels)):
        stats = dict(cached, source="cuobjdump")
        if from_driver:
            kernel._init_handles()
            stats.update(regs=kernel.n_regs, stack=4 * kernel.n_spills, source="driver")
        md = kernel.metadata
        stats.update(warps=md.num_warps, stages=md.num_stages, smem=md.shared)
        stats["occ_warps"], stats["occ_limit"] = occupancy(stats["regs"], md.num_warps,
                                                           md.shared + stats["smem_static"])
        out.append(stats)
    return out
